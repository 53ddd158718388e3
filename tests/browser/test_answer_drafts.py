"""A half-done answer survives a reload or leaving the page, and never follows its annotator to another task."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from annotate.models import Annotation, Assignment
from tests.browser.test_keyboard_annotation import displayed_ids, log_in, make_task, showing

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_reload_keeps_a_half_written_answer_and_a_better_answer(page, annotator, project):
    project.task_kinds = ["rating", "write"]
    project.save(update_fields=["task_kinds"])
    write = make_task(project, "write", 2, ["A draft."])
    rating = make_task(project, "rating", 1, ["Sydney."])
    log_in(page, annotator, f"/p/{project.slug}/annotate/")

    expect(page.locator("#written")).to_be_focused()
    page.keyboard.type(" Canberra is the **capital**.")
    page.reload()
    expect(page.locator("#written")).to_have_value("A draft. Canberra is the **capital**.")
    page.keyboard.press("Escape")
    page.keyboard.press("p")  # the preview renders what was restored, not the draft the page came with
    expect(page.locator("#written-preview strong")).to_have_text("capital")
    page.keyboard.press("Enter")

    expect(page.locator("#task")).to_have_attribute("data-announce", f"Task {rating.pk}: rate a response")
    for key in ["2", "w"]:
        page.keyboard.press(key)
    page.keyboard.type(" No: Canberra.")
    page.reload()
    expect(page.locator("#correction")).to_be_visible()  # restored, so shown: it will be sent
    expect(page.locator("#correction")).to_have_value("Sydney. No: Canberra.")
    page.keyboard.press("Enter")

    expect(page.locator("#task-heading")).to_have_text("All done")
    written = {a.task_id: a.written_response.content for a in Annotation.objects.select_related("written_response")}
    assert written == {write.pk: "A draft. Canberra is the **capital**.", rating.pk: "Sydney. No: Canberra."}


def test_a_reload_keeps_the_half_done_answer_of_every_kind(page, annotator, project):
    rating = make_task(project, "rating", 3, ["Canberra, since 1913."])
    pairwise = make_task(project, "pairwise", 2, ["Canberra.", "Sydney."])
    ranking = make_task(project, "ranking", 1, ["Canberra.", "Sydney.", "Melbourne."])
    task_url = f"/p/{project.slug}/annotate/"
    log_in(page, annotator, task_url)

    showing(page, rating)
    for key in ["4", "Shift+Digit2"]:
        page.keyboard.press(key)
    page.keyboard.press("c")
    page.keyboard.type("Half a thought")
    page.reload()
    showing(page, rating)
    expect(page.locator('input[name="score"][value="4"]')).to_be_checked()
    expect(page.locator('input[name="labels"][value="unsafe"]')).to_be_checked()
    expect(page.locator('input[name="labels"]:checked')).to_have_count(1)
    expect(page.locator("#comment")).to_have_value("Half a thought")
    page.keyboard.press("Enter")  # the restored answer is the one sent

    showing(page, pairwise)
    for key in ["Shift+ArrowRight", "x"]:
        page.keyboard.press(key)
    page.goto("/")  # an accidental navigation, and back: the same lease, the same draft
    page.goto(task_url)
    showing(page, pairwise)
    expect(page.locator('input[name="preference"][value="b2"]')).to_be_checked()
    expect(page.locator('input[name="both_bad"]')).to_be_checked()
    page.keyboard.press("Enter")

    first, second, third = showing(page, ranking)
    page.keyboard.press("Shift+ArrowDown")  # the first shown moves down: every response gets a rank
    page.reload()
    expect(page.locator(".ranking > .response")).to_have_count(3)
    assert displayed_ids(page) == [second, first, third]
    assert page.locator('select[name^="rank-"]').evaluate_all("s => s.map(e => e.value)") == ["1", "2", "3"]
    page.keyboard.press("Enter")

    expect(page.locator("#task-heading")).to_have_text("All done")
    answers = {a.task.kind: a for a in Annotation.objects.select_related("task")}
    assert (answers["rating"].score, answers["rating"].labels) == (4, ["unsafe"])
    assert answers["rating"].comment == "Half a thought"
    assert (answers["pairwise"].strength, answers["pairwise"].both_bad) == (2, True)
    assert answers["ranking"].ranking == [[second], [first], [third]]
    # Nothing is left behind for answered tasks.
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('arbiter:draft:'))") == []


def test_a_draft_is_not_carried_to_the_next_task(page, annotator, project):
    answered = make_task(project, "pairwise", 3, ["Canberra.", "Sydney."])
    skipped = make_task(project, "pairwise", 2, ["Perth.", "Hobart."])
    last = make_task(project, "pairwise", 1, ["Darwin.", "Adelaide."])
    log_in(page, annotator, f"/p/{project.slug}/annotate/")

    showing(page, answered)
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("c")
    page.keyboard.type("First task's comment")
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")

    showing(page, skipped)
    expect(page.locator('input[name="preference"]:checked')).to_have_count(0)
    expect(page.locator("#comment")).to_have_value("")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("s")

    showing(page, last)
    page.reload()  # nothing of the answered or the skipped task's draft comes back with the page either
    showing(page, last)
    expect(page.locator('input[name="preference"]:checked')).to_have_count(0)
    expect(page.locator("#comment")).to_have_value("")
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('arbiter:draft:'))") == []


def test_a_draft_goes_with_its_lease(page, annotator, project):
    task = make_task(project, "pairwise", 2, ["Canberra.", "Sydney."])
    make_task(project, "pairwise", 1, ["Perth.", "Hobart."])
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    showing(page, task)
    expires = timezone.now() + timedelta(seconds=3)
    Assignment.objects.update(expires_at=expires)
    page.reload()  # the page now knows the lease runs out in three seconds
    showing(page, task)
    page.keyboard.press("ArrowLeft")
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('arbiter:draft:'))") != []
    page.wait_for_timeout((expires - timezone.now()).total_seconds() * 1000 + 500)
    page.reload()  # a new lease: it starts blank, and the run-out lease's draft is dropped
    expect(page.locator("#answer")).to_be_visible()
    assert Assignment.objects.count() == 2
    expect(page.locator('input[name="preference"]:checked')).to_have_count(0)
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('arbiter:draft:'))") == []
