"""answer_from_shown: the task page's form and the API's JSON, in displayed terms, give the same stored answer."""

import pytest
from django.core.exceptions import ValidationError
from django.http import QueryDict

from annotate.answers import PREFERENCES, answer_from_shown, clean_answer, form_from_answer
from annotate.serializers import AnswerIn

SHOWN_ORDER = [12, 13, 11]


def form(**fields):
    """A task page's POST: every value a string, lists as repeated fields."""
    data = QueryDict(mutable=True)
    for name, value in fields.items():
        data.setlist(name, value if isinstance(value, list) else [value])
    return data


def json(body):
    """An API submit's body as the view hands it on: checked and typed by AnswerIn."""
    answer = AnswerIn(data=body)
    assert answer.is_valid(), answer.errors
    return answer.validated_data


def stored(data, kind, swapped=False):
    return answer_from_shown(data, kind=kind, shown_order=SHOWN_ORDER, swapped=swapped)


def refusal(data, kind):
    with pytest.raises(ValidationError) as excinfo:
        stored(data, kind)
    return excinfo.value.message_dict


class TestFormAndJsonAgree:
    def test_rating(self, project):
        from_form = stored(form(score="4", labels=["unsafe", "factual error"], comment="hm"), "rating")
        from_json = stored(json({"score": 4, "labels": ["unsafe", "factual error"], "comment": "hm"}), "rating")
        expected = {"score": 4, "labels": ["factual error", "unsafe"], "comment": "hm"}
        assert clean_answer(project, "rating", [11], from_form) == expected
        assert clean_answer(project, "rating", [11], from_json) == expected

    @pytest.mark.parametrize("swapped", [False, True])
    @pytest.mark.parametrize("preference", [p.value for p in PREFERENCES])
    def test_pairwise(self, preference, swapped):
        from_form = stored(form(preference=preference, both_bad="on"), "pairwise", swapped)
        from_json = stored(json({"preference": preference, "both_bad": True}), "pairwise", swapped)
        assert from_form == from_json
        assert from_json["both_bad"] is True

    def test_ranking(self):
        from_form = stored(form(**{"rank-12": "2", "rank-13": "1", "rank-11": "2"}), "ranking")
        from_json = stored(json({"ranks": {"12": 2, "13": 1, "11": 2}}), "ranking")
        assert from_form == from_json == {"ranking": [[13], [12, 11]], "comment": ""}


class TestDisplayOrder:
    @pytest.mark.parametrize(
        ("preference", "unswapped", "swapped"),
        [("a2", ("a", 2), ("b", 2)), ("a1", ("a", 1), ("b", 1)), ("tie", ("tie", None), ("tie", None))]
        + [("b1", ("b", 1), ("a", 1)), ("b2", ("b", 2), ("a", 2))],
    )
    def test_a_pair_shown_the_other_way_round_stores_the_other_side(self, preference, unswapped, swapped):
        for shown_swapped, side in [(False, unswapped), (True, swapped)]:
            answer = stored({"preference": preference}, "pairwise", shown_swapped)
            assert (answer["choice"], answer["strength"]) == side

    @pytest.mark.parametrize("swapped", [False, True])
    @pytest.mark.parametrize("preference", [p.value for p in PREFERENCES])
    def test_form_from_answer_gives_back_the_displayed_form(self, preference, swapped):
        answer = stored(form(preference=preference, both_bad="on"), "pairwise", swapped)
        assert form_from_answer(answer, kind="pairwise", swapped=swapped) == form(
            comment="", preference=preference, both_bad="on"
        )


class TestRefusalsNameTheField:
    def test_pairwise_without_a_preference(self):
        expected = {"preference": ["Choose which response is better, or tie."]}
        assert refusal(form(both_bad="on"), "pairwise") == refusal(json({"both_bad": True}), "pairwise") == expected

    @pytest.mark.parametrize("rank", ["0", "4", "", "x"])
    def test_a_rank_off_the_scale_names_its_response(self, rank):
        from_form = refusal(form(**{"rank-12": "1", "rank-13": rank, "rank-11": "2"}), "ranking")
        assert from_form == {"rank-13": ["Give every response a rank from 1 to 3."]}

    def test_a_missing_rank_names_its_response_from_form_or_json(self):
        expected = {"rank-11": ["Give every response a rank from 1 to 3."]}
        assert refusal(form(**{"rank-12": "1", "rank-13": "2"}), "ranking") == expected
        assert refusal(json({"ranks": {"12": 1, "13": 2}}), "ranking") == expected
        assert refusal(json({"ranks": {"12": 1, "13": 2, "11": 0}}), "ranking") == expected
