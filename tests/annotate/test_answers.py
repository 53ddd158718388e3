"""clean_answer: what a valid rating, pairwise vote or ranking is, and what each refusal names."""

import pytest
from django.core.exceptions import ValidationError

from annotate.answers import clean_answer

RESPONSE_IDS = [11, 12, 13]


def refusal(project, kind, data, response_ids=RESPONSE_IDS):
    """The {field: [messages]} of the ValidationError that clean_answer raises."""
    with pytest.raises(ValidationError) as excinfo:
        clean_answer(project, kind, response_ids, data)
    return excinfo.value.message_dict


class TestRating:
    @pytest.mark.parametrize("score", [1, 3, 5])
    def test_scores_on_the_scale_are_accepted(self, project, score):
        assert clean_answer(project, "rating", [11], {"score": score}) == {"score": score, "labels": [], "comment": ""}

    @pytest.mark.parametrize("score", [0, 6, -1])
    def test_scores_off_the_scale_are_refused(self, project, score):
        assert refusal(project, "rating", {"score": score}) == {"score": [f"{score} is outside the scale 1–5."]}

    def test_scale_follows_the_project(self, project):
        project.rating_min, project.rating_max = -3, 3
        assert clean_answer(project, "rating", [11], {"score": -3})["score"] == -3
        assert "score" in refusal(project, "rating", {"score": 4})

    @pytest.mark.parametrize(("given", "stored"), [("4", 4), (" 2 ", 2)])
    def test_digit_strings_from_a_form_become_numbers(self, project, given, stored):
        assert clean_answer(project, "rating", [11], {"score": given})["score"] == stored

    @pytest.mark.parametrize("score", [True, False, 2.5, "three", [3]])
    def test_non_integer_scores_are_refused(self, project, score):
        assert list(refusal(project, "rating", {"score": score})) == ["score"]

    @pytest.mark.parametrize("data", [{}, {"score": None}, {"score": ""}])
    def test_missing_score_is_refused(self, project, data):
        assert refusal(project, "rating", data) == {"score": ["Choose a score from 1 to 5."]}

    def test_labels_come_back_in_project_order(self, project):
        cleaned = clean_answer(project, "rating", [11], {"score": 2, "labels": ["off-topic", "factual error"]})
        assert cleaned["labels"] == ["factual error", "off-topic"]

    def test_repeated_label_is_stored_once(self, project):
        cleaned = clean_answer(project, "rating", [11], {"score": 2, "labels": ["unsafe", "unsafe"]})
        assert cleaned["labels"] == ["unsafe"]

    def test_label_outside_the_project_set_is_refused(self, project):
        errors = refusal(project, "rating", {"score": 2, "labels": ["unsafe", "rude"]})
        assert errors == {"labels": ["Not in the project's label set: rude."]}

    @pytest.mark.parametrize("labels", ["unsafe", [1], {"unsafe": True}])
    def test_labels_must_be_a_list_of_names(self, project, labels):
        assert list(refusal(project, "rating", {"score": 2, "labels": labels})) == ["labels"]

    def test_comment_is_kept(self, project):
        assert clean_answer(project, "rating", [11], {"score": 5, "comment": "Great."})["comment"] == "Great."

    def test_non_text_comment_is_refused(self, project):
        assert refusal(project, "rating", {"score": 5, "comment": 42}) == {"comment": ["Must be text."]}


class TestPairwise:
    @pytest.mark.parametrize("choice", ["a", "b"])
    def test_a_preference_defaults_to_strength_1(self, project, choice):
        cleaned = clean_answer(project, "pairwise", [11, 12], {"choice": choice})
        assert cleaned == {"choice": choice, "strength": 1, "both_bad": False, "comment": ""}

    @pytest.mark.parametrize(("given", "stored"), [(2, 2), ("2", 2), (1, 1), ("", 1)])
    def test_strength_from_json_or_form(self, project, given, stored):
        assert clean_answer(project, "pairwise", [11, 12], {"choice": "b", "strength": given})["strength"] == stored

    @pytest.mark.parametrize("strength", [0, 3, True, "much", 1.5])
    def test_strength_other_than_1_or_2_is_refused(self, project, strength):
        assert list(refusal(project, "pairwise", {"choice": "a", "strength": strength})) == ["strength"]

    def test_tie_has_no_strength(self, project):
        cleaned = clean_answer(project, "pairwise", [11, 12], {"choice": "tie"})
        assert cleaned == {"choice": "tie", "strength": None, "both_bad": False, "comment": ""}

    @pytest.mark.parametrize("strength", [1, 2, "2"])
    def test_tie_with_strength_is_refused(self, project, strength):
        assert refusal(project, "pairwise", {"choice": "tie", "strength": strength}) == {
            "strength": ["A tie has no strength."]
        }

    @pytest.mark.parametrize("choice", ["A", "c", "", None, 1])
    def test_choice_other_than_a_b_or_tie_is_refused(self, project, choice):
        assert list(refusal(project, "pairwise", {"choice": choice})) == ["choice"]

    @pytest.mark.parametrize(("given", "stored"), [("true", True), ("on", True), ("1", True), (True, True)])
    def test_both_bad_from_a_form_checkbox(self, project, given, stored):
        assert clean_answer(project, "pairwise", [11, 12], {"choice": "tie", "both_bad": given})["both_bad"] is stored

    @pytest.mark.parametrize("given", ["false", "0", "", None, False])
    def test_both_bad_off_values(self, project, given):
        assert clean_answer(project, "pairwise", [11, 12], {"choice": "a", "both_bad": given})["both_bad"] is False

    @pytest.mark.parametrize("given", ["yes", 2, "maybe"])
    def test_both_bad_other_values_are_refused(self, project, given):
        assert list(refusal(project, "pairwise", {"choice": "a", "both_bad": given})) == ["both_bad"]


class TestRanking:
    def test_strict_order_becomes_single_groups(self, project):
        cleaned = clean_answer(project, "ranking", RESPONSE_IDS, {"ranking": [13, 11, 12]})
        assert cleaned == {"ranking": [[13], [11], [12]], "comment": ""}

    def test_nested_list_is_a_tie(self, project):
        cleaned = clean_answer(project, "ranking", RESPONSE_IDS, {"ranking": [[13, 11], 12]})
        assert cleaned["ranking"] == [[11, 13], [12]]

    def test_all_tied(self, project):
        assert clean_answer(project, "ranking", RESPONSE_IDS, {"ranking": [[12, 11, 13]]})["ranking"] == [[11, 12, 13]]

    def test_missing_response_is_refused(self, project):
        errors = refusal(project, "ranking", {"ranking": [13, 11]})
        assert errors == {"ranking": ["Rank every response of the task exactly once (missing [12])."]}

    def test_response_of_another_task_is_refused(self, project):
        errors = refusal(project, "ranking", {"ranking": [13, 11, 12, 99]})
        assert errors == {"ranking": ["Rank every response of the task exactly once (not in this task: [99])."]}

    @pytest.mark.parametrize("ranking", [[13, 11, 12, 11], [[13, 11], 11, 12]])
    def test_duplicate_response_is_refused(self, project, ranking):
        assert refusal(project, "ranking", {"ranking": ranking}) == {"ranking": ["A response appears more than once."]}

    @pytest.mark.parametrize("ranking", [None, [], "13,11,12", [13, [], 11, 12], [13, "11", 12], [True, 11, 12]])
    def test_malformed_ranking_is_refused(self, project, ranking):
        assert list(refusal(project, "ranking", {"ranking": ranking})) == ["ranking"]


class TestAnyKind:
    @pytest.mark.parametrize(
        ("kind", "data", "field"),
        [
            ("rating", {"score": 3, "choice": "a"}, "choice"),
            ("pairwise", {"choice": "a", "score": 3}, "score"),
            ("ranking", {"ranking": RESPONSE_IDS, "strength": 1}, "strength"),
            ("pairwise", {"choice": "a", "confidence": "high"}, "confidence"),
        ],
    )
    def test_unknown_field_is_refused_by_name(self, project, kind, data, field):
        errors = refusal(project, kind, data)
        assert list(errors) == [field]
        assert f"Not a field of a {kind} answer" in errors[field][0]

    def test_unknown_kind_is_refused(self, project):
        assert refusal(project, "essay", {}) == {"kind": ["Unknown task kind 'essay'."]}

    @pytest.mark.parametrize("data", [None, [], "a"])
    def test_answer_must_be_an_object(self, project, data):
        assert refusal(project, "pairwise", data) == {"answer": ["Give the answer as an object."]}
