"""Every page works under the Content-Security-Policy: an annotator, a lead and a visitor walk them in Chromium.

The policy allows no inline script, inline style or eval. A page that needs one breaks quietly (a style not
applied, a handler that never runs), so each page is checked for what it should show or do, and the browser for
what it refused: `securitypolicyviolation` events and console messages, of which there must be none.
"""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import expect

from annotate import tasks as celery_tasks
from annotate.admin import project_leads_group
from annotate.models import DatasetSnapshot, Invitation, Membership, MembershipEvent, Project, QualityReport
from annotate.quality_reports import request_quality, run_quality_report
from models_registry.models import ModelVersion
from tests.annotate.test_quality_reports import answered
from tests.browser.accessibility import assert_no_serious_axe_violations
from tests.browser.test_keyboard_annotation import log_in, make_task
from training.models import RoundMetric, TrainingRound

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"width": 390, "height": 844}
# Added before any page script runs, in every document: reports what the policy refused.
REPORT_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (e) => window.__cspViolation(
    `${e.effectiveDirective} refused ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`));"""


class Refusals:
    """What the browser refused or complained about since the last check, with the page it happened on."""

    def __init__(self, page):
        self.page, self.seen = page, []
        page.expose_function("__cspViolation", lambda text: self.seen.append(f"violation: {text}"))
        page.context.add_init_script(REPORT_VIOLATIONS)
        page.on("console", self.on_console)

    def on_console(self, message):
        # As in conftest: Chromium asks for /favicon.ico by itself (the admin names none), a 404 is not the page's.
        if not message.location.get("url", "").endswith("/favicon.ico"):
            self.seen.append(f"console {message.type}: {message.text}")

    def refused_form_on(self, what, page_log):
        """A form the server refused (400, with the errors shown): Chromium logs that as a failed load, and nothing
        else may be logged."""
        self.page.wait_for_timeout(100)
        seen, self.seen = self.seen, []
        failed = "console error: Failed to load resource: the server responded with a status of 400 (Bad Request)"
        assert seen == [failed], f"{what} ({self.page.url}):\n" + "\n".join(seen)
        logged = [error for error in page_log.errors if "status of 400" in error]
        assert len(logged) == 1, page_log.errors
        page_log.errors.remove(logged[0])

    def none_on(self, what, *, axe=True, axe_exclude=()):
        """Nothing refused, and (every page walked here being one a person uses) nothing serious for axe-core."""
        # Violation events are dispatched as a task after the refusal: let them arrive.
        self.page.wait_for_timeout(100)
        seen, self.seen = self.seen, []
        assert seen == [], f"{what} ({self.page.url}):\n" + "\n".join(seen)
        shown = self.page.locator("body").inner_text()
        assert "{#" not in shown and "{%" not in shown, f"{what}: template syntax shown as text"
        if axe:
            assert_no_serious_axe_violations(self.page, what, exclude=axe_exclude)


@pytest.fixture
def refusals(page):
    return Refusals(page)


@pytest.fixture
def tasks(project):
    """One task of each kind, and one whose response is too long to format: the queue serves them in this order."""
    too_long = "| a | b |\n|---|---|\n" + "| **x** | `y` |\n" * (settings.ARBITER_MARKDOWN_MAX_CHARS // 15)
    return [
        make_task(project, "rating", 4, ["Canberra, since **1913**."]),
        make_task(project, "pairwise", 3, ["Canberra.", "Sydney, the *largest* city."]),
        make_task(project, "ranking", 2, ["Canberra.", "Sydney.", "Melbourne, until 1927."]),
        make_task(project, "pairwise", 1, ["Canberra.", too_long], prompt_text="Answer with a **long** table."),
    ]


@pytest.fixture
def lead_with_everything(lead, project):
    """A staff lead with the admin permissions, a running round with metrics, a model version and a snapshot."""
    lead.groups.add(project_leads_group())
    training_round = TrainingRound.objects.create(
        project=project, number=1, method="dpo", base_model="tiny", status="running", stage="dpo", step=2,
        total_steps=4, progress=0.5, log_tail="dpo step 2/4: loss 0.61",
    )  # fmt: skip
    for step, loss in [(1, 0.69), (2, 0.61)]:
        RoundMetric.objects.create(training_round=training_round, stage="dpo", step=step, values={"loss": loss})
    version = ModelVersion.register(project=project, kind="policy", base_model="tiny", training_round=training_round)
    version.promote()
    snapshot = DatasetSnapshot.objects.create(
        project=project, kind="pairs", status="ready", row_count=2, rows_written=2, sha256="ab" * 32
    )
    return {"user": lead, "round": training_round, "version": version, "snapshot": snapshot}


def both_widths(page, screenshot, name):
    screenshot(name)
    size = page.viewport_size
    page.set_viewport_size(PHONE)
    screenshot(f"{name}-phone")
    page.set_viewport_size(size)


def test_annotator_pages_work_under_the_policy(page, refusals, screenshot, annotator, project, tasks):
    page.goto("/login/")
    expect(page.locator("#id_username")).to_be_focused()  # the login page's own autofocus, no script needed
    refusals.none_on("login")
    log_in(page, annotator, "/")
    refusals.none_on("home")

    page.get_by_role("link", name=project.name).click()
    expect(page.locator("h1")).to_contain_text(project.name)
    expect(page.locator(".md strong")).to_have_text("helpful")  # the guidelines, formatted
    refusals.none_on("project page")
    page.goto(f"/p/{project.slug}/guidelines/")
    expect(page.locator("main strong")).to_have_text("helpful")
    refusals.none_on("guidelines page")

    page.goto(f"/p/{project.slug}/")
    page.get_by_role("link", name="Start annotating").click()
    page.wait_for_load_state()  # annotate.js (deferred) is listening: a key pressed before it would be lost
    page.evaluate("window.__marker = 1")  # survives only if every later task is swapped in, not loaded
    rating, pairwise, ranking, long_pair = tasks
    expect(page.locator(f'.response[data-response-id="{rating.response_ids()[0]}"] strong')).to_have_text("1913")
    page.keyboard.press("g")
    expect(page.locator("dialog#guidelines")).to_have_attribute("open", "")
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")  # no score yet: refused in the page, by annotate.js
    expect(page.locator("#answer-problem")).to_be_visible()
    # Resizing the comment box gives it a style attribute, which htmx must not copy onto the next task's box.
    box = page.locator("#comment").bounding_box()
    corner = (box["x"] + box["width"] - 3, box["y"] + box["height"] - 3)
    page.mouse.move(*corner)
    page.mouse.down()
    page.mouse.move(corner[0] + 60, corner[1] + 60, steps=5)
    page.mouse.up()
    assert "height" in page.locator("#comment").get_attribute("style")
    refusals.none_on("rating task")
    for key in ["Escape", "4", "Enter"]:  # Escape leaves the comment box that the resizing focused
        page.keyboard.press(key)

    expect(page.locator(f'.response[data-response-id="{pairwise.response_ids()[1]}"] em')).to_have_text("largest")
    refusals.none_on("pairwise task")
    for key in ["ArrowLeft", "Enter"]:
        page.keyboard.press(key)

    expect(page.locator(".ranking > .response")).to_have_count(3)
    refusals.none_on("ranking task")
    for key in ["Shift+ArrowDown", "Enter"]:  # moving one ranks them all
        page.keyboard.press(key)

    expect(page.locator("#task pre.plain")).to_have_count(3)  # prompt and both responses, plain
    expect(page.locator("#task .plain-note")).to_contain_text("shown as plain text")
    refusals.none_on("task too long to format")
    both_widths(page, screenshot, "task-plain")
    for key in ["t", "Enter"]:
        page.keyboard.press(key)

    expect(page.locator("#task-heading")).to_have_text("All done")
    assert page.evaluate("window.__marker") == 1
    assert [a.task_id for a in annotator.annotations.order_by("created_at")] == [t.pk for t in tasks]
    refusals.none_on("done")

    # My work, and changing an answer there (a window, so that answers to tasks now complete can change).
    Project.objects.filter(pk=project.pk).update(edit_window_minutes=60)
    page.goto(f"/p/{project.slug}/my-work/")
    expect(page.locator("#my-work tbody tr")).to_have_count(len(tasks))
    refusals.none_on("my work")
    page.get_by_role("link", name=f"Change your answer to task {pairwise.pk}").click()
    expect(page.locator("#task-heading")).to_contain_text("changing your answer")
    refusals.none_on("change an answer")
    page.keyboard.press("Enter")  # the same answer: nothing changes, and the page says so
    expect(page.locator(".message")).to_contain_text("nothing changed")
    refusals.none_on("my work after a change")

    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("What it is for").fill("labelling bot")
    page.get_by_role("button", name="Make token").click()  # a plain form post: the token comes from its field
    expect(page.locator("#new-token code.token")).to_be_visible()
    refusals.none_on("tokens page")


def test_lead_pages_and_admin_work_under_the_policy(
    page, refusals, screenshot, lead_with_everything, annotator, project, tasks
):
    # Something for the stats: two annotations this hour, one the hour before.
    for priority in (9, 8, 7):
        make_task(project, "rating", priority, ["Canberra."])
        project.next_assignment(annotator).submit({"score": 3}, user=annotator)
    now = timezone.now()
    annotator.annotations.update(created_at=now)
    annotator.annotations.filter(pk=annotator.annotations.earliest("pk").pk).update(created_at=now - timedelta(hours=1))
    lead, training_round, version, snapshot = lead_with_everything.values()
    log_in(page, lead, "/")

    page.goto(f"/p/{project.slug}/")
    page.get_by_role("link", name="Stats").click()
    meters = page.locator("#per-hour meter")
    assert [m.get_attribute("value") for m in meters.all()] == ["1", "2"]
    assert meters.first.bounding_box()["width"] > 100  # sized by the stylesheet, not by a style attribute
    refusals.none_on("stats")
    both_widths(page, screenshot, "stats")

    page.goto(f"/p/{project.slug}/")
    page.get_by_role("link", name="Training rounds").click()
    page.get_by_role("link", name="1", exact=True).click()
    expect(page.locator(".chart polyline")).to_have_count(1)
    # A running round polls itself: wait for one htmx poll to come back and be swapped in.
    with page.expect_response(lambda r: r.request.headers.get("hx-request") == "true") as poll:
        pass
    assert poll.value.ok
    expect(page.locator("#live #round-log")).to_have_text("dpo step 2/4: loss 0.61")
    refusals.none_on("round page")

    page.goto(f"/p/{project.slug}/rounds/1/cancel/")
    refusals.none_on("cancel a round: confirm")

    page.goto(f"/p/{project.slug}/models/")
    expect(page.locator("h1")).to_have_text("Models")
    refusals.none_on("models page")
    older = ModelVersion.register(project=project, kind="policy", base_model="tiny", training_round=training_round)
    page.goto(f"/p/{project.slug}/models/{older.pk}/promote/")
    refusals.none_on("promote a version: confirm")

    page.goto(f"/p/{project.slug}/settings/")
    expect(page.locator("#id_overlap")).to_be_visible()
    refusals.none_on("project settings")
    page.goto(f"/p/{project.slug}/tasks/{project.tasks.earliest('pk').pk}/preview/")
    expect(page.get_by_text("Preview — answers are not recorded.")).to_be_visible()
    refusals.none_on("task preview")
    page.goto(f"/p/{project.slug}/invitations/")
    page.get_by_role("button", name="Make link").click()
    expect(page.locator(".invite-link")).to_be_visible()
    refusals.none_on("invitations, a new link")
    page.goto("/projects/new/")
    refusals.none_on("new project")

    page.get_by_role("link", name="Admin").click()
    expect(page.locator("#site-name")).to_contain_text("Arbiter administration")
    refusals.none_on("admin index")
    pages = {
        "projects": "annotate/project/",
        "rounds": "training/traininground/",
        "snapshots": "annotate/datasetsnapshot/",
        "model versions": "models_registry/modelversion/",
        "round": f"training/traininground/{training_round.pk}/change/",
        "snapshot": f"annotate/datasetsnapshot/{snapshot.pk}/change/",
        "model version": f"models_registry/modelversion/{version.pk}/change/",
        "import": f"annotate/project/{project.pk}/import/",
        "export": f"annotate/project/{project.pk}/export/",
        "launch": f"training/traininground/launch/?project={project.pk}",
    }
    for name, path in pages.items():
        # The launch form reads the stages' config defaults, whose import pulls in torch and TRL (~12 s, once).
        response = page.goto(f"/admin/{path}", timeout=60_000 if name == "launch" else None)
        assert response.ok, (name, response.status)
        expect(page.locator("#content h1")).to_be_visible()
        refusals.none_on(f"admin {name}")
        if name in ("export", "launch"):
            screenshot(f"admin-{name}")  # forms that gained the aggregation choice

    # The project form's inline rows are added by the admin's own script.
    page.goto(f"/admin/annotate/project/{project.pk}/change/")
    rows = page.locator("#memberships-group tbody tr.form-row:not(.empty-form)")
    before = rows.count()
    page.get_by_role("button", name="Add another Membership").click()
    expect(rows).to_have_count(before + 1)
    # Django's own tabular inline names its fields by the column headers alone: axe finds every row's fields
    # unlabelled. That markup is Django's (admin/edit_inline/tabular.html), not ours to fix here.
    refusals.none_on("admin project form", axe_exclude=("#memberships-group",))


def test_quality_page_works_under_the_policy(
    page, page_log, refusals, screenshot, lead, annotator, project, make_user, monkeypatch
):
    monkeypatch.setattr(celery_tasks.refresh_quality, "delay", lambda report_id: None)  # no worker: run below
    careful = make_user("careful-reader")
    Membership.objects.create(project=project, user=careful)
    answered(project, annotator, 30, seconds=2)  # always the first shown, in two seconds
    for i in range(30):
        answered(project, careful, 1, seconds=25 + i, first=i % 3 == 0)
    request_quality(project)
    run_quality_report(QualityReport.objects.get(project=project))
    log_in(page, lead, "/")

    page.goto(f"/p/{project.slug}/")
    page.get_by_role("link", name="Quality").click()
    expect(page.locator("h1")).to_have_text("Quality")
    rows = page.locator("#annotators tbody tr")
    expect(rows.first.locator("th")).to_contain_text("annotator")  # flagged first
    expect(rows.first.locator(".badge.flag-too_fast")).to_be_visible()
    expect(rows.nth(1).locator("[class*='flag-']")).to_have_count(0)
    refusals.none_on("quality page")
    both_widths(page, screenshot, "quality")
    page.set_viewport_size(PHONE)  # on a phone the table becomes a card per annotator: nothing runs off the side
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    fast = rows.first.locator("td[data-label='Fast']").bounding_box()  # the last column, not scrolled out of sight
    assert fast["x"] + fast["width"] <= PHONE["width"], fast
    page.set_viewport_size({"width": 1280, "height": 900})

    # Pause the flagged annotator from the keyboard: the region is swapped by htmx, not the page reloaded.
    page.evaluate("window.__marker = 1")
    summary = rows.first.locator("summary")
    summary.focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    page.keyboard.press("Shift+Tab")
    screenshot("quality-decide-focused")  # the focus ring shows where the keyboard is
    page.keyboard.press("Tab")
    expect(rows.first.get_by_label("Reason")).to_be_focused()
    page.keyboard.press("Tab")  # to Pause, with no reason given: refused, and the field says why
    page.keyboard.press("Enter")
    reason = page.locator("#annotators tbody tr").first.get_by_label("Reason")
    expect(reason).to_be_focused()
    expect(reason).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#members .errorlist")).to_contain_text("Say why")
    refusals.refused_form_on("decision refused", page_log)
    screenshot("quality-decision-refused")
    page.keyboard.type("Answers in two seconds, always the left one.")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#members .message.success")).to_be_focused()
    expect(page.locator("#members .message.success")).to_contain_text("Paused annotator")
    expect(page.locator("#annotators tbody tr").first.locator(".badge-paused")).to_be_visible()
    expect(page.locator("#events tbody tr").first).to_contain_text("Answers in two seconds")
    assert page.evaluate("window.__marker") == 1
    assert Membership.objects.get(user=annotator).paused
    assert MembershipEvent.objects.get().reason == "Answers in two seconds, always the left one."
    refusals.none_on("paused")

    # Recompute: queued, the status region polls, and says when newer figures are in.
    page.get_by_role("button", name="Recompute now").click()
    expect(page.locator("#quality-status")).to_contain_text("A recomputation is queued")
    expect(page.get_by_role("button", name="Recompute now")).to_be_disabled()
    run_quality_report(QualityReport.objects.get(project=project))
    expect(page.get_by_role("link", name="Show the new figures")).to_be_visible(timeout=10_000)
    assert page.evaluate("window.__marker") == 1
    refusals.none_on("recompute")

    # Thresholds: a plain form, refused values named by field.
    page.get_by_label("Lowest competence").fill("2")
    page.get_by_role("button", name="Save thresholds").click()
    expect(page.locator("#id_min_competence_error")).to_contain_text("less than or equal to 1")
    refusals.refused_form_on("thresholds refused", page_log)
    page.get_by_label("Lowest competence").fill("0.3")
    page.get_by_role("button", name="Save thresholds").click()
    expect(page.locator(".messages")).to_contain_text("Thresholds saved")
    refusals.none_on("thresholds saved")
    both_widths(page, screenshot, "quality-after")
    page.set_viewport_size(PHONE)  # the decisions too: a card each, the reason in sight
    reason = page.locator("#events td[data-label='Reason']").first.bounding_box()
    assert reason["x"] + reason["width"] <= PHONE["width"], reason


def test_api_docs_load_swagger_ui_under_the_policy(page, refusals, screenshot):
    page.goto("/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Arbiter API")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    operations.first.locator(".opblock-summary").click()  # expands: Swagger UI renders its parameters
    expect(operations.first.locator(".opblock-body")).to_be_visible()
    # Swagger UI's own page and theme (no lang on its <html>, its colours, buttons inside buttons): a developer's
    # tool from drf-spectacular, not one of our pages, so axe is not run on it.
    refusals.none_on("API docs", axe=False)
    both_widths(page, screenshot, "api-docs")


def test_pages_before_logging_in_work_under_the_policy(page, refusals, lead, project):
    _, link = Invitation.issue(project, by=lead, role="annotator")
    page.goto(f"/invite/{link}/")
    expect(page.locator("#id_username")).to_be_visible()
    refusals.none_on("join by invitation")
    page.goto("/password-reset/")
    refusals.none_on("password reset")
    page.locator("input[type=email]").fill("nobody@example.com")
    page.locator("form button[type=submit], form input[type=submit]").last.click()
    refusals.none_on("password reset sent")


def test_write_task_and_better_answer_work_under_the_policy(page, refusals, screenshot, annotator, project):
    """The write task's editor and its preview (an htmx request whose answer is swapped in), and a rating's better
    answer opened: nothing refused, nothing serious for axe, at both widths."""
    Project.objects.filter(pk=project.pk).update(task_kinds=["rating", "write"])
    write = make_task(project, "write", 2, ["A *draft* to edit."])
    make_task(project, "rating", 1, ["Sydney."])
    log_in(page, annotator, f"/p/{project.slug}/annotate/")
    expect(page.locator("#written")).to_be_focused()
    refusals.none_on("write task")
    page.keyboard.type(" Canberra is the **capital**.")
    page.keyboard.press("Escape")
    page.keyboard.press("p")
    expect(page.locator("#written-preview strong")).to_have_text("capital")
    refusals.none_on("write task, preview")
    both_widths(page, screenshot, "write-preview")
    page.keyboard.press("p")
    page.keyboard.press("Control+Enter")

    expect(page.locator("#task")).not_to_have_attribute("data-announce", f"Task {write.pk}: write the answer")
    page.keyboard.press("3")
    page.keyboard.press("w")
    expect(page.locator("#correction")).to_be_focused()
    refusals.none_on("rating with a better answer")
    both_widths(page, screenshot, "rating-correction")
