"""A lead sets up a project on its settings page in Chromium, and previews a task as annotators see it.

What the lead does goes through the page as a person would do it (keys, labels, links); what counts is what the
page shows and what the database holds afterwards. The pages must work under the Content-Security-Policy.
"""

import pytest
from playwright.sync_api import expect

from annotate.models import Assignment, Project
from tests.browser.test_every_page_under_csp import PHONE, Refusals
from tests.browser.test_keyboard_annotation import log_in, make_task

pytestmark = pytest.mark.django_db(transaction=True)

WIDE = {"width": 1280, "height": 900}


@pytest.fixture
def refusals(page):
    return Refusals(page)


@pytest.fixture
def tasks(project):
    return [
        make_task(project, "rating", 2, ["Canberra, since **1913**.\n\n1. Planned\n2. Built"]),
        make_task(project, "pairwise", 1, ["Canberra.", "Sydney."]),
    ]


def answered_with(refusals, page_log, status):
    """The page came back with `status` (a refused form, a confirmation asked for): Chromium logs it as a failed
    load, and nothing else may be logged."""
    refusals.page.wait_for_timeout(100)
    seen, refusals.seen = refusals.seen, []
    assert len(seen) == 1 and f"status of {status}" in seen[0], seen
    page_log.errors[:] = [error for error in page_log.errors if f"status of {status}" not in error]


def fits(page, what):
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"{what} is {width} px wide"


def test_lead_sets_up_a_project_then_previews_a_task(
    browser, live_server, page, page_log, screenshot, refusals, lead, annotator, project, tasks
):
    log_in(page, lead, f"/p/{project.slug}/")
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Settings", exact=True)).to_be_visible()
    refusals.none_on("the settings page")
    screenshot("settings")

    # Task kinds: ranking off, from the keyboard.
    ranking = page.get_by_role("checkbox", name="N-way ranking")
    ranking.focus()
    page.keyboard.press("Space")
    expect(ranking).not_to_be_checked()

    # The scale grows to 1–7: the page adds a row for each new point and keeps what was typed in the others.
    page.get_by_label("Point 1").fill("Harmful")
    page.get_by_label("Top of the scale").fill("7")
    expect(page.get_by_label("Point 7")).to_be_visible()
    expect(page.get_by_label("Point 1")).to_have_value("Harmful")
    expect(page.get_by_label("Point 5")).to_have_value("Ideal")
    page.get_by_label("Point 7").fill("Perfect")

    # Guidelines: the preview follows the draft, rendered and sanitised by the server as annotators will see it.
    page.locator("#id_guidelines").fill("## Be kind\n\nPrefer the **true** answer.\n\n<script>alert(1)</script>")
    preview = page.locator("#guidelines-preview")
    expect(preview.locator("h2")).to_have_text("Be kind")
    expect(preview.locator("strong")).to_have_text("true")
    expect(preview).to_contain_text("<script>alert(1)</script>")  # shown as written, never run
    refusals.none_on("the live previews")
    screenshot("draft")

    # A field error, named, linked from the summary, the field marked; nothing typed is lost.
    overlap = page.get_by_label("Overlap (annotations per task)")
    overlap.fill("0")
    page.get_by_role("button", name="Save settings").click()
    summary = page.locator("#settings-errors")
    expect(summary).to_contain_text("Overlap (annotations per task): Ensure this value is greater than or equal to 1.")
    answered_with(refusals, page_log, 400)
    expect(summary).to_be_focused()
    expect(overlap).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Point 7")).to_have_value("Perfect")
    expect(page.get_by_role("checkbox", name="N-way ranking")).not_to_be_checked()
    expect(page.locator("#guidelines-preview strong")).to_have_text("true")
    assert Project.objects.get(pk=project.pk).overlap == 2
    screenshot("field-error")
    page.set_viewport_size(PHONE)
    fits(page, "the settings page with errors")
    screenshot("field-error-phone")
    page.set_viewport_size(WIDE)

    # Fixed from the keyboard: the summary's link goes to the field, Enter saves.
    summary.get_by_role("link", name="Overlap (annotations per task)").click()
    expect(overlap).to_be_focused()
    page.keyboard.press("Control+a")
    page.keyboard.type("3")
    page.keyboard.press("Enter")
    # Open tasks keep their overlap: the page says so and asks before saving.
    changes = page.locator("#settings-changes")
    expect(changes).to_contain_text("Overlap 2 → 3 applies to tasks added from now on")
    answered_with(refusals, page_log, 409)
    expect(changes).to_be_focused()
    screenshot("confirm")
    changes.get_by_label("Save anyway").check()
    changes.get_by_role("button", name="Save settings").click()
    expect(page.locator(".message.success")).to_contain_text("Settings saved")
    refusals.none_on("the saved settings")

    project.refresh_from_db()
    assert project.task_kinds == ["rating", "pairwise"]
    assert (project.rating_min, project.rating_max, project.overlap) == (1, 7, 3)
    assert project.rating_descriptions == {"1": "Harmful", "5": "Ideal", "7": "Perfect"}
    assert project.guidelines.startswith("## Be kind")
    screenshot("saved")
    page.set_viewport_size(PHONE)
    fits(page, "the settings page")
    screenshot("saved-phone")
    page.set_viewport_size(WIDE)

    # The preview: the annotation page with the new scale, its controls disabled, and no lease taken.
    page.get_by_role("link", name="single-sided rating").click()
    expect(page.locator(".preview-banner")).to_contain_text("Preview — answers are not recorded.")
    scores = page.locator('input[name="score"]')
    expect(scores).to_have_count(7)
    for i in range(7):
        expect(scores.nth(i)).to_be_disabled()
    expect(page.locator(".scale")).to_contain_text("Perfect")
    expect(page.get_by_role("button", name="Submit")).to_be_disabled()
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    expect(page.locator('input[name="score"]:checked')).to_have_count(0)
    page.keyboard.press("g")  # the guidelines open as they do for annotators, with the saved text
    expect(page.locator("dialog#guidelines")).to_have_attribute("open", "")
    expect(page.locator("dialog#guidelines h2", has_text="Be kind")).to_be_visible()
    page.keyboard.press("Escape")
    refusals.none_on("the task preview")
    assert not Assignment.objects.exists()
    screenshot("preview")
    page.set_viewport_size(PHONE)
    fits(page, "the task preview")
    screenshot("preview-phone")

    # The texts read as they do on the annotation page.
    shown = {
        "prompt": page.locator("#task .prompt").inner_text(),
        "response": page.locator("#task .response .md").inner_text(),
    }
    annotators = browser.new_context(base_url=live_server.url, viewport=PHONE)
    try:
        other = annotators.new_page()
        log_in(other, annotator, f"/p/{project.slug}/annotate/")
        assert other.locator("#task .prompt").inner_text() == shown["prompt"]
        assert other.locator("#task .response .md").inner_text() == shown["response"]
        assert other.locator('input[name="score"]').count() == 7
    finally:
        annotators.close()
