"""The launch page's GPU memory estimate in Chromium: "Check memory" shows it by part, and a round bigger than the
largest reported GPU is refused with the estimate beside the reason."""

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from annotate.admin import project_leads_group
from tests.browser.test_every_page_under_csp import Refusals
from tests.browser.test_keyboard_annotation import log_in
from tests.conftest import write_model_files
from training.models import TrainingRound, Worker

QWEN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tokenizers" / "qwen2.5-instruct"
pytestmark = pytest.mark.django_db(transaction=True)


def test_the_launch_page_estimates_and_refuses_what_cannot_fit(page, screenshot, lead, project, tmp_path, settings):
    if not (QWEN / "config.json").is_file():
        pytest.skip(f"{QWEN} is absent: the real configs live in ../shared/data/tokenizers/ beside the checkout")
    settings.ARBITER_MODEL_ROOTS = [tmp_path]
    base = write_model_files(tmp_path / "qwen2.5-0.5b")
    shutil.copy(QWEN / "config.json", Path(base) / "config.json")
    lead.groups.add(project_leads_group())
    refusals = Refusals(page)
    log_in(page, lead, "/")

    page.goto(f"/admin/training/traininground/launch/?project={project.pk}", timeout=60_000)
    expect(page.locator("#memory + p")).to_contain_text("No GPU worker has reported in")
    page.get_by_label("Method").select_option("dpo")
    page.get_by_label("Base").fill(base)
    page.get_by_label("Settings").fill("per_device_batch_size=4\nmax_length=2048")
    page.get_by_role("button", name="Check memory").click()
    expect(page.locator("#memory + p")).to_contain_text("for information: no GPU worker has reported in")
    expect(page.locator("#memory ~ table")).to_contain_text("Logits (batch × length × vocabulary)")
    refusals.none_on("check memory")
    screenshot("check")

    Worker.report("celery@gpu-1", queues=["gpu"], devices=[{"name": "NVIDIA L4", "total_memory": 23034 * 2**20}])
    page.get_by_role("button", name="Launch", exact=True).click()
    expect(page.locator(".errorlist").first).to_contain_text(
        "more than the largest GPU the workers have reported, NVIDIA L4"
    )
    expect(page.locator("#memory ~ table tr").last).to_contain_text("Total")
    assert not TrainingRound.objects.exists()
    refusals.none_on("refused launch")
    screenshot("refused")

    page.get_by_label("Settings").fill("per_device_batch_size=1\nmax_length=1024\nactivation_checkpointing=true")
    page.get_by_role("button", name="Check memory").click()
    expect(page.locator("#memory + p")).to_contain_text("has 22.5 GiB")
    expect(page.locator("#memory + p")).not_to_contain_text("more than")
    refusals.none_on("fits")
    screenshot("fits")
