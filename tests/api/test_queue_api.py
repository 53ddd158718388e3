"""The annotation queue over the API: next, submit, skip, as the pages do it, and the annotations list."""

import pytest

from annotate.models import Annotation, Assignment

P = "/api/v1/projects/helpfulness"


def next_task(client, **body):
    return client.post(f"{P}/next/", body)


def submit(client, lease, answer):
    return client.post(lease["submit_url"], answer)


@pytest.fixture
def bot(client_for, annotator):
    return client_for(annotator)


class TestNext:
    def test_next_returns_the_lease_with_the_prompt_and_the_responses_in_shown_order(self, bot, project, make_task):
        task = make_task(project, "pairwise", ["Two.", "Seven."])

        response = next_task(bot)

        assert response.status_code == 200
        lease = response.json()
        assignment = Assignment.objects.get(pk=lease["id"])
        assert lease["task"] == task.pk and lease["kind"] == "pairwise" and lease["status"] == "active"
        assert lease["prompt"]["messages"] == task.prompt.messages
        assert [r["letter"] for r in lease["responses"]] == ["A", "B"]
        assert [r["id"] for r in lease["responses"]] == assignment.shown_order
        assert {r["content"] for r in lease["responses"]} == {"Two.", "Seven."}
        fields = {f["name"]: f for f in lease["answer_fields"]}
        assert fields["preference"]["required"] and fields["preference"]["choices"] == ["a2", "a1", "tie", "b1", "b2"]
        assert set(fields) == {"preference", "both_bad", "comment"}
        assert lease["submit_url"] == f"{P}/assignments/{assignment.pk}/submit/"

    def test_answer_fields_for_rating_and_ranking(self, bot, project, make_task):
        make_task(project, "rating", ["Two."])
        make_task(project, "ranking", ["Two.", "Three.", "Five."])

        rating = next_task(bot).json()
        submit(bot, rating, {"score": 5})
        ranking = next_task(bot).json()

        score = next(f for f in rating["answer_fields"] if f["name"] == "score")
        assert score["choices"] == [1, 2, 3, 4, 5] and "1: Useless" in score["description"]
        labels = next(f for f in rating["answer_fields"] if f["name"] == "labels")
        assert labels["choices"] == ["factual error", "unsafe", "off-topic"]
        ranks = next(f for f in ranking["answer_fields"] if f["name"] == "ranks")
        assert ranks["keys"] == [str(r["id"]) for r in ranking["responses"]] and ranks["choices"] == [1, 2, 3]
        assert [r["letter"] for r in ranking["responses"]] == ["A", "B", "C"]

    def test_next_submit_next_gives_another_task(self, bot, project, make_task):
        make_task(project, "pairwise")
        make_task(project, "pairwise")

        first = next_task(bot).json()
        assert submit(bot, first, {"preference": "tie"}).status_code == 200
        second = next_task(bot).json()

        assert second["task"] != first["task"]

    def test_asking_again_returns_the_same_lease(self, bot, project, make_task):
        make_task(project, "pairwise")
        make_task(project, "pairwise")

        assert next_task(bot).json()["id"] == next_task(bot).json()["id"]

    def test_nothing_left_is_204(self, bot, project, make_task):
        make_task(project, "pairwise")
        submit(bot, next_task(bot).json(), {"preference": "a2"})

        response = next_task(bot)

        assert response.status_code == 204
        assert response.content == b""

    def test_several_leases_at_once_up_to_the_cap_then_409(self, bot, project, make_task):
        project.max_open_leases = 2
        project.save()
        for _ in range(3):
            make_task(project, "pairwise")

        first = next_task(bot, reuse_lease=False).json()
        second = next_task(bot, reuse_lease=False).json()
        capped = next_task(bot, reuse_lease=False)

        assert first["id"] != second["id"]
        assert capped.status_code == 409
        assert "submit or skip one first" in capped.json()["detail"]

    def test_an_outsider_gets_404(self, client_for, outsider, project, make_task):
        make_task(project, "pairwise")

        assert next_task(client_for(outsider)).status_code == 404


class TestSubmit:
    def test_submitting_twice_stores_one_annotation_and_succeeds_both_times(self, bot, project, make_task):
        make_task(project, "pairwise")
        lease = next_task(bot).json()

        first = submit(bot, lease, {"preference": "a1", "comment": "close"})
        again = submit(bot, lease, {"preference": "a1", "comment": "close"})

        assert first.status_code == again.status_code == 200
        assert first.json()["id"] == again.json()["id"]
        assert Annotation.objects.count() == 1
        assert Assignment.objects.get(pk=lease["id"]).status == Assignment.Status.SUBMITTED

    def test_a_different_answer_to_a_submitted_lease_is_409_and_the_first_stands(self, bot, project, make_task):
        make_task(project, "pairwise")
        lease = next_task(bot).json()
        submit(bot, lease, {"preference": "a1"})

        again = submit(bot, lease, {"preference": "b2"})

        assert again.status_code == 409
        assert "already answered this task differently" in again.json()["detail"]
        assert Annotation.objects.get().strength == 1

    def test_someone_elses_lease_is_404(self, bot, client_for, second_annotator, project, make_task):
        make_task(project, "pairwise")
        theirs = next_task(client_for(second_annotator)).json()

        assert submit(bot, theirs, {"preference": "a1"}).status_code == 404
        assert bot.post(theirs["skip_url"]).status_code == 404
        assert not Annotation.objects.exists()

    @pytest.mark.parametrize(
        ("kind", "texts", "answer", "field"),
        [
            ("pairwise", ["x", "y"], {}, "preference"),
            ("pairwise", ["x", "y"], {"preference": "a3"}, "preference"),
            ("rating", ["x"], {"score": 9}, "score"),
            ("rating", ["x"], {"score": 3, "labels": ["no such label"]}, "labels"),
            ("rating", ["x"], {"score": "three"}, "score"),
        ],
    )
    def test_a_bad_answer_is_400_naming_the_field(self, bot, project, make_task, kind, texts, answer, field):
        make_task(project, kind, texts)
        lease = next_task(bot).json()

        response = submit(bot, lease, answer)

        assert response.status_code == 400
        assert field in response.json()
        assert not Annotation.objects.exists()

    def test_a_bad_ranking_names_the_response(self, bot, project, make_task):
        make_task(project, "ranking", ["x", "y", "z"])
        lease = next_task(bot).json()
        a, b, c = (r["id"] for r in lease["responses"])

        response = submit(bot, lease, {"ranks": {str(a): 1, str(b): 2}})

        assert response.status_code == 400
        assert f"rank-{c}" in response.json()

    def test_a_skipped_lease_cannot_be_submitted_409(self, bot, project, make_task):
        make_task(project, "pairwise")
        lease = next_task(bot).json()
        assert bot.post(lease["skip_url"]).status_code == 204

        response = submit(bot, lease, {"preference": "a1"})

        assert response.status_code == 409
        assert response.json() == {"detail": "You skipped this task."}

    def test_submits_are_throttled(self, bot, project, make_task, throttle_rates):
        throttle_rates("submit", "2/min")
        make_task(project, "pairwise")
        lease = next_task(bot).json()

        codes = [submit(bot, lease, {"preference": "a1"}).status_code for _ in range(3)]

        assert codes == [200, 200, 429]


class TestAnswersInDisplayedTerms:
    """A bot answers about the A and B it was shown; the stored choice is about the task's positions."""

    @pytest.mark.parametrize("shown_reversed", [False, True])
    @pytest.mark.parametrize("preference", ["a2", "a1", "b1", "b2"])
    def test_pairwise_stores_the_choice_for_the_displayed_response(
        self, bot, project, make_task, shown_reversed, preference
    ):
        task = make_task(project, "pairwise", ["first", "second"])
        lease = next_task(bot).json()
        positions = task.response_ids()
        shown = positions[::-1] if shown_reversed else positions
        Assignment.objects.filter(pk=lease["id"]).update(shown_order=shown)
        lease = next_task(bot).json()  # the same lease, now showing `shown`
        assert [r["id"] for r in lease["responses"]] == shown
        preferred = lease["responses"][0 if preference[0] == "a" else 1]

        annotation = submit(bot, lease, {"preference": preference}).json()

        assert annotation["responses"] == positions and annotation["shown_order"] == shown
        assert annotation["choice"] in ("a", "b")
        assert positions["ab".index(annotation["choice"])] == preferred["id"]
        assert annotation["strength"] == int(preference[1])
        stored = Annotation.objects.get()
        assert stored.choice == annotation["choice"]

    def test_a_tie_and_both_bad(self, bot, project, make_task):
        make_task(project, "pairwise")
        lease = next_task(bot).json()

        annotation = submit(bot, lease, {"preference": "tie", "both_bad": True}).json()

        assert (annotation["choice"], annotation["strength"], annotation["both_bad"]) == ("tie", None, True)

    def test_ranking_by_response_id_with_a_tie(self, bot, project, make_task):
        make_task(project, "ranking", ["x", "y", "z"])
        lease = next_task(bot).json()
        a, b, c = (r["id"] for r in lease["responses"])

        annotation = submit(bot, lease, {"ranks": {str(a): 2, str(b): 1, str(c): 2}}).json()

        assert annotation["ranking"] == [[b], sorted([a, c])]

    def test_rating_with_labels_and_a_comment(self, bot, project, make_task):
        make_task(project, "rating", ["x"])
        lease = next_task(bot).json()

        annotation = submit(bot, lease, {"score": 2, "labels": ["unsafe"], "comment": "rude"}).json()

        assert (annotation["score"], annotation["labels"], annotation["comment"]) == (2, ["unsafe"], "rude")


class TestSkip:
    def test_a_skipped_task_is_not_given_again(self, bot, project, make_task):
        make_task(project, "pairwise")
        lease = next_task(bot).json()

        assert bot.post(lease["skip_url"]).status_code == 204
        assert bot.post(lease["skip_url"]).status_code == 204  # skipping twice changes nothing
        assert next_task(bot).status_code == 204

    def test_a_submitted_task_cannot_be_skipped_409(self, bot, project, make_task):
        make_task(project, "pairwise")
        lease = next_task(bot).json()
        submit(bot, lease, {"preference": "a1"})

        assert bot.post(lease["skip_url"]).status_code == 409


class TestAnnotations:
    @pytest.fixture
    def annotated(self, bot, client_for, second_annotator, project, make_task):
        for _ in range(3):
            make_task(project, "pairwise", required=2)
        other = client_for(second_annotator)
        for client in (bot, bot, other):
            submit(client, next_task(client).json(), {"preference": "a1"})

    def test_an_annotator_sees_only_their_own(self, bot, annotated):
        rows = bot.get(f"{P}/annotations/").json()["results"]

        assert [row["annotator"] for row in rows] == ["annotator", "annotator"]

    def test_a_lead_sees_all_in_pages_by_cursor(self, client_for, lead, annotated):
        client = client_for(lead)

        page = client.get(f"{P}/annotations/", {"page_size": 2}).json()
        rest = client.get(page["next"]).json()

        assert [row["annotator"] for row in page["results"] + rest["results"]] == ["annotator", "annotator", "second"]
        assert rest["next"] is None and rest["previous"]

    def test_filtered_by_task(self, client_for, lead, annotated):
        task = Annotation.objects.filter(annotator__username="second").get().task_id

        rows = client_for(lead).get(f"{P}/annotations/", {"task": task}).json()["results"]

        assert [row["task"] for row in rows] == [task]
