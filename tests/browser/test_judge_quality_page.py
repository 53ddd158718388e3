"""The judges on the Quality page in Chromium, at 1280 and 390 px: their figures and reliability diagram, under the
Content-Security-Policy and with nothing serious for axe-core."""

import pytest
from playwright.sync_api import expect

from annotate import tasks as celery_tasks
from annotate.models import Judge, Membership, QualityReport
from annotate.quality_reports import request_quality, run_quality_report
from annotate.simulation import simulate_judge
from tests.annotate.test_judge_quality import RULE, answer_by_rule
from tests.annotate.test_simulate_judge import make_tasks
from tests.browser.test_every_page_under_csp import PHONE, Refusals, both_widths
from tests.browser.test_keyboard_annotation import log_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_judges_figures_and_reliability_diagram(page, screenshot, lead, project, make_user, monkeypatch):
    refusals = Refusals(page)
    monkeypatch.setattr(celery_tasks.refresh_quality, "delay", lambda report_id: None)  # no worker: run below
    people = [make_user(name) for name in ("ann", "bob")]
    for user in people:
        Membership.objects.create(project=project, user=user)
    tasks = make_tasks(project, 120) + make_tasks(project, 30, "rating") + make_tasks(project, 20, "ranking")
    answer_by_rule(project, tasks, people)
    judge = Judge.create(project, "rubric-llm", kind="llm", endpoint="http://j.invalid/v1", model_name="m")
    simulate_judge(judge, tasks, accuracy=0.75, seed=0, rule=RULE, inconsistency=0.15)
    request_quality(project)
    run_quality_report(QualityReport.objects.get(project=project))
    log_in(page, lead, f"/p/{project.slug}/quality/")

    section = page.locator("#judge-rubric-llm")
    expect(section.get_by_role("heading", name="rubric-llm")).to_be_visible()
    expect(section.locator(".judge-figures tbody tr")).to_have_count(4)  # all, then rating, pairwise, ranking
    expect(section.get_by_role("img", name="Reliability diagram of rubric-llm")).to_be_visible()
    expect(section.locator(".reliability-table caption")).to_contain_text("calibration error")
    refusals.none_on("quality page with a judge")
    page.locator("#judges").scroll_into_view_if_needed()
    both_widths(page, screenshot, "quality-judges")
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
