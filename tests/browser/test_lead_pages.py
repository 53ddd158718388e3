"""The lead's pages in Chromium, at 1280 and 390 px: the round page (its phase, its new samples, cancelling after a
confirm page), promoting a version on the models page, the launch form, the snapshot's download link, and the
tokens page that a reload does not make a second token on."""

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from annotate.admin import project_leads_group
from annotate.exports import create_snapshot, run_snapshot
from annotate.models import ApiToken, Response, Task, TaskResponse
from models_registry.models import ModelVersion
from tests.browser.test_every_page_under_csp import Refusals, both_widths
from tests.browser.test_keyboard_annotation import log_in, make_task
from training.models import TrainingRound

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def refusals(page):
    return Refusals(page)


def sampled_round(project, number):
    """A round that ended after sampling three responses to one prompt into a ranking task."""
    training_round = TrainingRound.objects.create(
        project=project, number=number, method="dpo", base_model="tiny", status="succeeded", progress=1,
        config={"dpo": {}, "sample": {}}, stage="sample", step=3, total_steps=3,
    )  # fmt: skip
    prompt = project.prompts.create(messages=[{"role": "user", "content": "Name a city."}], external_id="sampled")
    task = Task.objects.create(project=project, prompt=prompt, kind="ranking", round_number=number)
    for position, text in enumerate(["Paris.", "Lima.", "Oslo."]):
        response = Response.objects.create(
            prompt=prompt, content=text, source="model", generation_params={"round": number}
        )
        TaskResponse.objects.create(task=task, response=response, position=position)
    return training_round


def test_round_page_names_the_phase_shows_new_samples_and_confirms_cancel(page, refusals, screenshot, lead, project):
    running = TrainingRound.objects.create(
        project=project, number=1, method="dpo", base_model="tiny", status="running", stage="sample", step=30,
        total_steps=120, progress=0.8, config={"dpo": {}, "sample": {}}, log_tail="Sampling 120 sequences",
    )  # fmt: skip
    finished = sampled_round(project, 2)
    log_in(page, lead, "/")

    page.goto(reverse("round_page", args=[project.slug, running.number]))
    expect(page.locator("#round-phase")).to_have_text("Sampling new responses into the queue: 30 of 120 responses")
    cancel = page.get_by_role("link", name="Cancel round…")
    assert cancel.evaluate("e => getComputedStyle(e).color") == "rgb(179, 38, 30)"  # outlined in red, not solid
    refusals.none_on("running round")
    both_widths(page, screenshot, "round-sampling")

    cancel.click()
    expect(page.locator("h1")).to_have_text("Cancel round 1?")
    running.refresh_from_db()
    assert not running.cancel_requested  # the link only asks
    refusals.none_on("confirm cancel")
    both_widths(page, screenshot, "round-cancel-confirm")
    page.get_by_role("button", name="Cancel round 1").click()
    expect(page.locator(".round-status")).to_contain_text("stopping after this step")
    expect(page.get_by_role("link", name="Cancel round…")).to_have_count(0)
    running.refresh_from_db()
    assert running.cancel_requested

    page.goto(reverse("round_page", args=[project.slug, finished.number]))
    expect(page.locator("#new-samples strong")).to_have_text("3 new samples in the queue")
    expect(page.locator("#new-samples")).to_contain_text("in 1 task, 1 still open")
    refusals.none_on("finished round")
    both_widths(page, screenshot, "round-new-samples")


def test_a_lead_promotes_a_version_on_the_models_page(page, refusals, screenshot, lead, project):
    first = ModelVersion.register(project=project, kind="policy", base_model="tiny")
    second = ModelVersion.register(project=project, kind="policy", base_model="tiny", parent=first)
    first.promote()
    log_in(page, lead, "/")

    page.goto(reverse("model_leaderboard", args=[project.slug]))
    both_widths(page, screenshot, "models")
    page.get_by_role("link", name="Promote policy v2").click()
    expect(page.locator("h1")).to_have_text("Promote policy v2?")
    expect(page.locator("main")).to_contain_text("policy v1, active now, is archived")
    refusals.none_on("confirm promote")
    both_widths(page, screenshot, "promote-confirm")
    page.get_by_role("button", name="Promote policy v2").click()
    expect(page.locator(".message.success")).to_have_text("policy v2 is now the active policy.")
    expect(page.locator("#registry")).to_contain_text("Archived")
    refusals.none_on("promoted")
    both_widths(page, screenshot, "models-promoted")
    second.refresh_from_db()
    assert second.status == "active"


def test_launch_form_preselects_the_project_and_the_snapshot_page_downloads(
    page, refusals, screenshot, lead, annotator, project
):
    lead.groups.add(project_leads_group())
    make_task(project, "rating", 0, ["Canberra."])
    project.next_assignment(annotator).submit({"score": 4}, user=annotator)
    snapshot = run_snapshot(create_snapshot(project, kind="votes", format="jsonl", style="standard", filters={}))
    log_in(page, lead, "/")

    # The launch form reads the stages' config defaults, whose import pulls in torch and TRL (~12 s, once).
    page.goto(reverse("admin:training_traininground_launch"), timeout=60_000)
    expect(page.get_by_label("Project")).to_have_value(str(project.pk))  # the lead's only project
    expect(page.get_by_role("heading", name="Which annotations")).to_be_visible()
    refusals.none_on("launch form")
    both_widths(page, screenshot, "launch")

    page.goto(reverse("admin:annotate_datasetsnapshot_change", args=[snapshot.pk]))
    links = page.locator("#content a[href*='download'], #content a[href*='/media/']")
    expect(links).to_have_count(1)
    with page.expect_download() as download:
        links.click()
    saved = download.value.path()
    with open(saved, "rb") as got, snapshot.file.open("rb") as stored:
        assert got.read() == stored.read() and snapshot.row_count == 1
    refusals.none_on("snapshot page")
    both_widths(page, screenshot, "snapshot")


def test_reloading_the_tokens_page_makes_no_second_token(page, page_log, refusals, screenshot, annotator):
    log_in(page, annotator, "/")
    page.goto(reverse("api_tokens"))
    page.get_by_label("What it is for").fill("labelling bot")
    page.get_by_role("button", name="Make token").click()
    expect(page.locator("#new-token code.token")).to_be_visible()
    both_widths(page, screenshot, "token-made")

    page.reload()
    expect(page.locator("#tokens tbody tr")).to_have_count(1)
    expect(page.locator("#new-token")).to_have_count(0)  # shown once
    assert ApiToken.objects.filter(user=annotator).count() == 1
    assert not [d for d in page_log.dialogs if "resubmi" in d.lower()]
    refusals.none_on("tokens page")
    screenshot("token-reloaded")


def test_a_ppo_round_page_charts_kl_against_its_target_and_shows_a_runaway_warning(
    page, refusals, screenshot, lead, project
):
    ppo = {"kl_target": 3.0, "kl_stop": 3.0, "kl_coef": 0.05}
    training_round = TrainingRound.objects.create(
        project=project, number=1, method="ppo", base_model="tiny", status="succeeded", progress=1,
        config={"reward": {}, "ppo": ppo, "sample": {}}, stage="sample",
        warning="PPO stopped at step 40: its KL to the reference (the round's base policy) stayed above 9 nats per "
        "response for 3 steps in a row (last 12.4). The policy kept is the one from before the run-away, after step "
        "37 (KL 8.1).",
    )  # fmt: skip
    for step in range(1, 41):
        kl = 0.1 * step if step < 30 else 3 + (step - 30) ** 1.4
        values = {"kl": kl, "beta": 0.05 * (1 + 0.008) ** max(0, step - 30), "reward": 0.02 * step}
        training_round.metrics.create(stage="ppo", step=step, values=values)
    log_in(page, lead, "/")

    page.goto(reverse("round_page", args=[project.slug, training_round.number]))
    expect(page.locator("#round-warning")).to_contain_text("PPO stopped at step 40")
    kl_chart = page.locator("figure.chart", has_text="ppo/kl")
    expect(kl_chart.locator("line.chart-line-target")).to_have_count(1)
    expect(kl_chart).to_contain_text("dashed: target 3.0000")
    assert kl_chart.locator("line.chart-line-stop").evaluate("e => getComputedStyle(e).color") == "rgb(179, 38, 30)"
    expect(page.locator("figure.chart", has_text="ppo/beta")).to_have_count(1)
    refusals.none_on("ppo round")
    both_widths(page, screenshot, "ppo-round")
