"""An annotator writes answers with the keyboard alone: a write task from a model draft, one from nothing (a blank
answer refused in the page), and a rating with a better answer.

Nothing is clicked. The editor has the focus when a write task arrives; P previews what was written (the server's
own sanitised rendering, as responses are shown), Ctrl+Enter submits from a text box, W opens the better answer.
"""

import pytest
from playwright.sync_api import expect

from annotate.models import Annotation, Response, TaskKind
from tests.browser.test_keyboard_annotation import XSS_PAYLOADS, log_in, make_task

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"width": 390, "height": 844}
DRAFT = "Sydney.\n\n" + "\n\n".join(XSS_PAYLOADS)
# Anything in the preview that could run code or make a request (as test_keyboard_annotation.ACTIVE_CONTENT).
ACTIVE_PREVIEW = """() => [...document.querySelectorAll('#written-preview *')]
    .filter(e => ['SCRIPT', 'IMG', 'SVG', 'IFRAME'].includes(e.tagName.toUpperCase())
        || [...e.attributes].some(a => /^on/i.test(a.name) || /^\\s*javascript:/i.test(a.value)))
    .map(e => e.outerHTML)"""


@pytest.fixture
def queue(project):
    project.task_kinds = [*project.task_kinds, TaskKind.WRITE]
    project.save(update_fields=["task_kinds"])
    return {
        "draft": make_task(project, TaskKind.WRITE, 3, [DRAFT]),
        "blank": make_task(project, TaskKind.WRITE, 2, [], prompt_text="Name the largest city of Australia."),
        "rating": make_task(project, TaskKind.RATING, 1, ["Sydney is the capital."]),
    }


def both_widths(page, screenshot, name):
    screenshot(name, full_page=False)
    size = page.viewport_size
    page.set_viewport_size(PHONE)
    screenshot(f"{name}-phone", full_page=False)
    page.set_viewport_size(size)


def test_annotator_writes_edits_previews_and_corrects_with_keys_only(
    page, page_log, screenshot, annotator, project, queue
):
    task_url = f"/p/{project.slug}/annotate/"
    log_in(page, annotator, task_url)
    page.evaluate("window.__marker = 1")

    # From a draft: the editor holds it as written (markup as text) and has the focus.
    editor = page.locator("#written")
    expect(editor).to_be_focused()
    assert editor.input_value() == DRAFT
    page.keyboard.press("Control+a")
    page.keyboard.type("Canberra is the **capital**.\n\n<script>alert(6)</script>")
    page.keyboard.press("Escape")  # leave the editor: the task's keys work again
    page.keyboard.press("p")
    preview = page.locator("#written-preview")
    expect(preview).to_be_visible()
    expect(preview.locator("strong")).to_have_text("capital")  # htmx brought the server's rendering
    expect(preview).to_contain_text("<script>alert(6)</script>")  # shown as written, not run
    assert page.evaluate(ACTIVE_PREVIEW) == []
    both_widths(page, screenshot, "write-preview")
    page.keyboard.press("p")  # back to the editor
    expect(preview).to_be_hidden()
    expect(editor).to_be_focused()
    page.keyboard.type(" Since 1913.")
    both_widths(page, screenshot, "write-editor")
    page.keyboard.press("Control+Enter")

    # From nothing: a blank answer is refused in the page, and nothing is sent.
    expect(page.locator("#task")).to_have_attribute("data-announce", f"Task {queue['blank'].pk}: write the answer")
    expect(editor).to_be_focused()
    assert editor.input_value() == ""
    page.keyboard.type("   ")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#answer-problem")).to_have_text("Write the answer first (W goes to the editor).")
    page.keyboard.press("Control+a")
    page.keyboard.type("Sydney.")
    page.keyboard.press("Control+Enter")

    # A rating with a better answer: W opens it with the response to edit, and the focus in it.
    expect(page.locator("#task")).to_have_attribute("data-announce", f"Task {queue['rating'].pk}: rate a response")
    page.keyboard.press("2")
    page.keyboard.press("w")
    correction = page.locator("#correction")
    expect(correction).to_be_focused()
    assert correction.input_value() == "Sydney is the capital."
    page.keyboard.press("Control+a")
    page.keyboard.type("Canberra is the capital; Sydney is the largest city.")
    both_widths(page, screenshot, "rating-correction")
    page.keyboard.press("Control+Enter")

    expect(page.locator("#task-heading")).to_have_text("All done")
    assert page.evaluate("window.__marker") == 1
    assert page_log.dialogs == []

    answers = {a.task_id: a for a in Annotation.objects.select_related("written_response")}
    drafted, blank, rated = answers[queue["draft"].pk], answers[queue["blank"].pk], answers[queue["rating"].pk]
    assert drafted.written_response.content == ("Canberra is the **capital**.\n\n<script>alert(6)</script> Since 1913.")
    assert blank.written_response.content == "Sydney."
    assert rated.score == 2
    assert rated.written_response.content == "Canberra is the capital; Sydney is the largest city."
    written = Response.objects.filter(source=Response.Source.HUMAN)
    assert written.count() == 3 and set(written.values_list("author", flat=True)) == {annotator.pk}
