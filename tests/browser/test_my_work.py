"""An annotator answers a pair, finds the answer on "my work" in the words they chose, changes it with the keyboard,
and the export holds the new answer. The pair is shown the other way round from the task's order, so a page that
forgot to map the shown A and B back to the task's positions would show, or store, the wrong side."""

import json

import pytest
from playwright.sync_api import expect

from annotate.exports import create_snapshot, run_snapshot
from annotate.models import Annotation
from tests.browser.test_keyboard_annotation import log_in, make_task, showing, shown_reversed  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.usefixtures("shown_reversed")
def test_annotator_changes_an_answer_from_my_work_with_keys_and_the_export_has_it(page, screenshot, annotator, project):
    task = make_task(project, "pairwise", 1, ["Canberra.", "Sydney, the largest city."])
    task.required_annotations = 2  # still open after this answer, so it can be changed
    task.save(update_fields=["required_annotations"])
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    shown_order = showing(page, task)
    assert shown_order == task.response_ids()[::-1]  # shown A is "Sydney", the task's B

    page.keyboard.press("ArrowLeft")  # A (Sydney) better
    page.keyboard.press("Enter")
    expect(page.locator("#task-heading")).to_have_text("All done")
    assert Annotation.objects.get().choice == "b"

    page.goto(f"/p/{project.slug}/my-work/")
    row = page.locator("#my-work tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".answer-words")).to_have_text("A better")
    screenshot("my-work")

    change = page.get_by_role("link", name=f"Change your answer to task {task.pk}")
    change.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#task-heading")).to_contain_text("changing your answer")
    assert showing(page, task) == shown_order  # the same sides as when it was answered
    expect(page.locator('input[name="preference"][value="a1"]')).to_be_checked()
    screenshot("change")

    page.keyboard.press("Shift+ArrowRight")  # B (Canberra) much better
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/p/{project.slug}/my-work/")
    expect(page.locator(".message.success")).to_contain_text("your answer is now B much better")
    expect(row.locator(".answer-words")).to_have_text("B much better")
    expect(row).to_contain_text("changed 1 time")
    screenshot("changed")

    annotation = Annotation.objects.get()
    assert (annotation.choice, annotation.strength) == ("a", 2)
    assert annotation.revisions.get().answer["choice"] == "b"
    snapshot = run_snapshot(create_snapshot(project, kind="pairs"))
    (pair,) = [json.loads(line) for line in snapshot.file.open("rb").read().decode().splitlines()]
    assert pair["chosen"] == [{"role": "assistant", "content": "Canberra."}]

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/p/{project.slug}/my-work/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot("my-work-390")
    page.goto(f"/p/{project.slug}/my-work/{annotation.pk}/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot("change-390")
