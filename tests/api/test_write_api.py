"""Written answers over the API: a write task's text and a rating's correction, as the pages take them."""

import pytest

from annotate.models import Annotation, Response, TaskKind

P = "/api/v1/projects/helpfulness"


@pytest.fixture
def bot(client_for, annotator, project):
    project.task_kinds = [*project.task_kinds, TaskKind.WRITE]
    project.save(update_fields=["task_kinds"])
    return client_for(annotator)


def test_a_write_lease_says_what_to_send_and_a_submit_stores_one_response(bot, project, make_task, annotator):
    make_task(project, "write", ["A draft."])

    lease = bot.post(f"{P}/next/").json()
    assert lease["kind"] == "write"
    assert [r["content"] for r in lease["responses"]] == ["A draft."]
    fields = {f["name"]: f for f in lease["answer_fields"]}
    assert set(fields) == {"text", "comment"} and fields["text"]["required"]
    assert "draft" in fields["text"]["description"]

    blank = bot.post(lease["submit_url"], {"text": " \n"})
    assert blank.status_code == 400
    assert blank.json()["text"] == ["Write the answer: it is empty."]

    for _ in range(2):  # a retry stores nothing more
        done = bot.post(lease["submit_url"], {"text": "Written, by me."})
        assert done.status_code == 200
    assert done.json()["written"] == "Written, by me."
    written = Response.objects.get(source="human")
    assert (written.content, written.author) == ("Written, by me.", annotator)
    assert done.json()["written_response"] == written.pk


def test_a_rating_takes_a_correction_and_my_work_changes_it(bot, project, make_task):
    make_task(project, "rating", ["Nine."], required=2)
    lease = bot.post(f"{P}/next/").json()
    assert "correction" in {f["name"] for f in lease["answer_fields"]}

    same = bot.post(lease["submit_url"], {"score": 1, "correction": "Nine."})
    assert same.status_code == 400 and "correction" in same.json()
    answer = bot.post(lease["submit_url"], {"score": 1, "correction": "Two."}).json()
    assert answer["written"] == "Two."

    mine = bot.get(f"{P}/my-work/").json()["results"][0]
    assert mine["shown_answer"] == "1, and a better answer"
    changed = bot.post(mine["change_url"], {"score": 1, "correction": "Two, or three."})
    assert changed.status_code == 200 and changed.json()["written"] == "Two, or three."
    assert changed.json()["revisions"][0]["answer"]["correction"] == "Two."
    assert Annotation.objects.get().written_response.content == "Two, or three."


def test_leads_see_who_wrote_a_response(client_for, lead, bot, project, make_task, annotator):
    make_task(project, "write", [])
    lease = bot.post(f"{P}/next/").json()
    bot.post(lease["submit_url"], {"text": "Mine."})

    listed = client_for(lead).get(f"{P}/responses/").json()["results"]
    assert [(r["content"], r["source"], r["author"]) for r in listed] == [("Mine.", "human", "annotator")]
