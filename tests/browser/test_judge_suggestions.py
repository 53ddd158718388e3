"""Hybrid labelling and suggestions in Chromium: a lead turns them on from the settings page, an annotator sees the
judge's suggestion (or, in the control group, nothing) and answers from the keyboard, and the Quality page shows
how far suggestions sway people."""

import pytest
from playwright.sync_api import expect

from annotate.judges import Verdict, record
from annotate.models import Annotation, Judge, Project, Task
from tests.browser.test_every_page_under_csp import Refusals
from tests.browser.test_keyboard_annotation import log_in, make_task, showing

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def refusals(page):
    return Refusals(page)


def test_lead_turns_on_routing_and_suggestions_then_an_annotator_sees_one(
    browser, live_server, page, page_log, screenshot, refusals, lead, annotator, project
):
    Project.objects.filter(pk=project.pk).update(gold_rate=0)
    judge = Judge.create(project, "gpt-judge", kind=Judge.Kind.LLM, endpoint="http://judge.invalid/v1", model_name="m")
    log_in(page, lead, f"/p/{project.slug}/settings/")

    # Routing without a judge is refused, naming the field.
    page.get_by_label("Hybrid labelling: route tasks by the judge's answer").check()
    page.get_by_role("button", name="Save settings").last.click()
    summary = page.locator("#settings-errors")
    expect(summary).to_contain_text("choose the judge first")
    expect(summary).to_be_focused()
    refusals.refused_form_on("routing without a judge", page_log)
    screenshot("routing-without-judge")

    # Chosen from the keyboard's reach: the select, the boxes and the shares by their labels.
    page.get_by_label("The project's judge").select_option(label="gpt-judge — LLM (OpenAI-compatible endpoint)")
    page.get_by_label("Confidence to take the judge's label").fill("0.75")
    page.get_by_label("Audit share").fill("0")
    page.get_by_label("Show annotators the judge's suggestion").check()
    page.get_by_label("Control group").fill("0")
    page.get_by_role("button", name="Save settings").last.click()
    expect(page.locator(".message.success")).to_contain_text("Settings saved")
    refusals.none_on("the saved judge settings")
    page.locator("#judge-settings").scroll_into_view_if_needed()
    screenshot("judge-settings")
    project.refresh_from_db()
    assert (project.judge, project.routing, project.routing_confidence) == (judge, True, 0.75)
    assert project.show_judge_suggestions and project.suggestion_control_share == 0

    # The judge answers: sure of one task (it takes the judge's label), unsure of the other (people first).
    sure = make_task(project, "pairwise", 1, ["Canberra.", "Sydney."])
    unsure = make_task(project, "pairwise", 0, ["Perth.", "Canberra, since 1913."], prompt_text="And its capital?")
    for task, confidence in ((sure, 0.95), (unsure, 0.6)):
        answer = {"choice": "b", "strength": 2, "both_bad": False}
        record(judge, Verdict(task.pk, answer, confidence=confidence, consistent=True, detail={"attempts": []}))
    assert dict(Task.objects.values_list("pk", "routed")) == {
        sure.pk: Task.Routed.JUDGE,
        unsure.pk: Task.Routed.PEOPLE_FIRST,
    }

    page.context.clear_cookies()
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    shown = showing(page, unsure)
    letter = "A" if shown[0] == unsure.response_ids()[1] else "B"  # the task's B, in this lease's letters
    note = page.get_by_role("note").filter(has_text="The judge suggests")
    expect(note).to_have_text(f"The judge suggests: {letter} much better (confidence 60 %). Give your own judgement.")
    expect(page.locator("#task")).to_have_attribute("data-announce", f"Task {unsure.pk}: compare two responses; "
                                                    f"the judge suggests {letter} much better")  # fmt: skip
    refusals.none_on("the task page with a suggestion")
    screenshot("suggestion")

    page.keyboard.press("t")  # a tie, whatever the judge said
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="All done")).to_be_visible()
    answer = Annotation.objects.get(annotator=annotator)
    assert (answer.task_id, answer.choice, answer.assignment.suggestion_shown) == (unsure.pk, "tie", True)

    # The Quality page: one answer shown the suggestion, none in the control group yet.
    page.context.clear_cookies()
    log_in(page, lead, f"/p/{project.slug}/quality/")
    section = page.locator("#suggestions")
    expect(section).to_contain_text("Judge suggestions (gpt-judge; shown)")
    expect(section.get_by_role("row", name="Shown the suggestion")).to_contain_text("0 %")
    expect(page.locator("#suggestions-difference")).to_contain_text("needs answers in both groups")
    refusals.none_on("the Quality page with suggestions")
    section.scroll_into_view_if_needed()
    screenshot("quality-suggestions", full_page=False)
