"""The annotator's pages on a wide screen and a phone: controls in view beside long texts, nothing off-screen, focus
and screen-reader announcements where a keyboard or screen-reader user expects them."""

import pytest
from playwright.sync_api import expect

from tests.browser.accessibility import assert_no_serious_axe_violations
from tests.browser.test_keyboard_annotation import log_in, make_task, showing

pytestmark = pytest.mark.django_db(transaction=True)

WIDE = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
LONG = "\n\n".join(f"Paragraph {i}: Canberra, chosen as a compromise between Sydney and Melbourne." for i in range(80))


def in_viewport(page, locator) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] and box["x"] >= 0


def uncovered(page, locator) -> bool:
    """Whether the element is on screen and what is drawn at its centre is the element itself, not a bar above it."""
    return locator.evaluate(
        """e => { const b = e.getBoundingClientRect(); const x = b.left + b.width / 2, y = b.top + b.height / 2;
                  return y > 0 && y < innerHeight && e.contains(document.elementFromPoint(x, y)); }"""
    )


@pytest.mark.parametrize("size", [WIDE, PHONE], ids=["wide", "phone"])
@pytest.mark.parametrize("kind", ["rating", "pairwise"])
def test_answer_controls_stay_in_view_beside_a_long_response(page, screenshot, annotator, project, size, kind):
    task = make_task(project, kind, 1, [LONG] if kind == "rating" else [LONG, LONG])
    page.set_viewport_size(size)
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    showing(page, task)
    submit = page.get_by_role("button", name="Submit")
    first_choice = page.locator("#answer input[type=radio]").first
    for response in page.locator("#task .response").all():
        # Reading down the response: its middle, then its last line at the bottom of the screen.
        for paragraph, block in [(40, "center"), (-1, "end")]:
            response.locator(".md p").nth(paragraph).evaluate(f"e => e.scrollIntoView({{block: '{block}'}})")
            assert in_viewport(page, submit), (kind, size, paragraph, submit.bounding_box())
            assert in_viewport(page, first_choice), (kind, size, paragraph, first_choice.bounding_box())
    screenshot(f"{kind}-scrolled", full_page=False)
    # At the end of the page nothing covers any response's last line: the bar has come to rest below them.
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    for response in page.locator("#task .response").all():
        last = response.locator(".md p").last
        last.scroll_into_view_if_needed()
        assert uncovered(page, last), (kind, size, last.text_content())
    screenshot(f"{kind}-end", full_page=False)
    assert page.evaluate("document.documentElement.scrollWidth") <= size["width"]
    # And it is still answered from the keyboard, as before.
    page.keyboard.press("1" if kind == "rating" else "t")
    page.keyboard.press("Enter")
    expect(page.locator("#task-heading")).to_have_text("All done")


def test_home_page_fits_a_phone(page, screenshot, annotator, project):
    make_task(project, "rating", 1, ["Canberra."])
    page.set_viewport_size(PHONE)
    log_in(page, annotator, "/")
    start = page.get_by_role("link", name="Start annotating")
    box = start.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert_no_serious_axe_violations(page, "home on a phone")
    screenshot("home-phone")
    start.click()
    expect(page.locator("#task-heading")).to_contain_text("rating")


def test_the_five_pairwise_choices_lay_out_evenly_on_a_phone(page, screenshot, annotator, project):
    task = make_task(project, "pairwise", 1, ["Canberra.", "Sydney."])
    page.set_viewport_size(PHONE)
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    showing(page, task)
    boxes = [label.bounding_box() for label in page.locator(".preference .choice").all()]
    assert len(boxes) == 5
    assert len({round(b["y"]) for b in boxes}) == 1, boxes  # one row, left to right
    assert max(b["width"] for b in boxes) - min(b["width"] for b in boxes) < 1, boxes
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= PHONE["width"] for b in boxes), boxes
    assert [b["x"] for b in boxes] == sorted(b["x"] for b in boxes)
    screenshot("pairwise-phone")


def test_closing_the_guidelines_gives_the_focus_back(page, annotator, project):
    task = make_task(project, "pairwise", 1, ["Canberra.", "Sydney."])
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    showing(page, task)
    dialog = page.locator("dialog#guidelines")

    page.keyboard.press("ArrowRight")
    choice = page.locator('input[name="preference"][value="b1"]')
    choice.focus()
    page.keyboard.press("g")
    expect(dialog).to_have_attribute("open", "")
    dialog.locator(".md").click()  # reading, the annotator clicks into the text: the focus leaves the dialog's button
    page.keyboard.press("Escape")
    expect(dialog).not_to_have_attribute("open", "")
    expect(choice).to_be_focused()

    link = page.get_by_role("link", name="Guidelines")
    link.click()
    expect(dialog).to_have_attribute("open", "")
    assert_no_serious_axe_violations(page, "guidelines dialog")
    page.get_by_role("button", name="Close").click()
    expect(link).to_be_focused()


def test_the_next_task_is_announced_when_it_swaps_in(page, annotator, project):
    first = make_task(project, "rating", 3, ["Canberra."])
    second = make_task(project, "pairwise", 2, ["Canberra.", "Sydney."])
    third = make_task(project, "ranking", 1, ["Canberra.", "Sydney.", "Melbourne."])
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    announcer = page.locator("#task-announcer")
    expect(announcer).to_have_attribute("aria-live", "polite")
    showing(page, first)
    for key in ["3", "Enter"]:
        page.keyboard.press(key)
    showing(page, second)
    expect(announcer).to_have_text(f"Task {second.pk}: compare two responses")
    page.keyboard.press("s")
    showing(page, third)
    expect(announcer).to_have_text(f"Task {third.pk}: rank 3 responses")
    page.keyboard.press("s")
    expect(announcer).to_have_text("All done")
