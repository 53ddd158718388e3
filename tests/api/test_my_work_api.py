"""Your work over the API: listing your answers in the terms you gave them, and changing one as a submit is checked."""

import pytest

from annotate.models import Annotation, AnnotationRevision, Assignment

P = "/api/v1/projects/helpfulness"


@pytest.fixture
def bot(client_for, annotator):
    return client_for(annotator)


def answer(bot, body):
    lease = bot.post(f"{P}/next/", {}).json()
    return bot.post(lease["submit_url"], body).json()


def show_next_lease(project, user, *, swapped=True):
    """The user's next lease, shown the other way round (the task's B as A), or in the task's order."""
    lease = project.next_assignment(user)
    order = lease.task.response_ids()
    Assignment.objects.filter(pk=lease.pk).update(shown_order=order[::-1] if swapped else order)


class TestMyWork:
    def test_lists_your_answers_newest_first_in_the_terms_shown(self, bot, project, annotator, make_task):
        make_task(project, "pairwise", required=1)
        make_task(project, "pairwise")
        show_next_lease(project, annotator, swapped=False)
        first = answer(bot, {"preference": "a1"})
        show_next_lease(project, annotator)
        second = answer(bot, {"preference": "a2"})

        listed = bot.get(f"{P}/my-work/").json()["results"]

        assert [row["id"] for row in listed] == [second["id"], first["id"]]
        assert [row["shown_answer"] for row in listed] == ["A much better", "A better"]
        assert [row["choice"] for row in listed] == ["b", "a"]  # task positions, as every export reads them
        assert listed[0]["locked_because"] == "" and "only while its task is open" in listed[1]["locked_because"]
        assert listed[0]["change_url"] == f"{P}/annotations/{second['id']}/change/"

    def test_lists_only_your_own(self, bot, client_for, lead, project, make_task):
        make_task(project, "pairwise")
        answer(client_for(lead), {"preference": "a1"})

        assert bot.get(f"{P}/my-work/").json()["results"] == []


class TestChange:
    def test_a_change_in_shown_terms_is_stored_in_task_terms_with_its_history(self, bot, project, annotator, make_task):
        make_task(project, "pairwise")
        show_next_lease(project, annotator)
        given = answer(bot, {"preference": "a2", "comment": "tidier"})

        changed = bot.post(f"{P}/annotations/{given['id']}/change/", {"preference": "b1", "both_bad": True})

        assert changed.status_code == 200
        body = changed.json()
        assert (body["choice"], body["strength"], body["both_bad"]) == ("a", 1, True)
        assert body["shown_answer"] == "B better, both bad"
        assert body["revisions"][0]["answer"] == {"choice": "b", "strength": 2, "both_bad": False, "comment": "tidier"}
        assert body["revisions"][0]["by"] == "annotator"

    def test_the_same_change_twice_succeeds_twice_and_is_one_revision(self, bot, project, make_task):
        make_task(project, "rating", ["Two."])
        given = answer(bot, {"score": 2})
        url = f"{P}/annotations/{given['id']}/change/"

        responses = [bot.post(url, {"score": 4, "labels": ["unsafe"]}, format="json") for _ in range(2)]

        assert [r.status_code for r in responses] == [200, 200]
        assert AnnotationRevision.objects.count() == 1
        assert Annotation.objects.get().score == 4

    def test_a_bad_answer_is_400_by_field(self, bot, project, make_task):
        make_task(project, "rating", ["Two."])
        given = answer(bot, {"score": 2})

        refused = bot.post(f"{P}/annotations/{given['id']}/change/", {"score": 9})

        assert refused.status_code == 400 and "outside the scale" in refused.json()["score"][0]

    def test_after_the_task_completed_it_is_409_with_the_reason(self, bot, project, make_task):
        make_task(project, "pairwise", required=1)
        given = answer(bot, {"preference": "a1"})
        stored = Annotation.objects.get().choice  # "a" or "b": the sides are shown in a random order

        refused = bot.post(f"{P}/annotations/{given['id']}/change/", {"preference": "b1"})

        assert refused.status_code == 409
        assert refused.json()["detail"] == (
            "Its task is complete: an answer can be changed only while its task is open."
        )
        assert Annotation.objects.get().choice == stored

    def test_someone_elses_answer_is_404(self, bot, client_for, lead, project, make_task):
        make_task(project, "pairwise")
        theirs = answer(client_for(lead), {"preference": "a1"})

        assert bot.post(f"{P}/annotations/{theirs['id']}/change/", {"preference": "b1"}).status_code == 404
