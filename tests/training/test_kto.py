"""The KTO stage and the kto round: the loss starts at 0.5 and falls on rated answers, only the adapter moves, the
saved adapter reloads; the command line runs it; on every model family it sees the template's prompt and answers
that end their turn; a round trains on the unpaired export of rated tasks, registers a policy and samples, and a
project without ratings is refused at launch."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from django.core.exceptions import ValidationError
from transformers import AutoModelForCausalLM

from annotate.importing import import_file
from annotate.models import DatasetSnapshot, Response
from models_registry.models import ModelVersion
from tests.training.conftest import marker_pairs, marker_unpaired, save_adapter, settings, write_jsonl
from tests.training.test_families import PROMPT, STOPS, attends_to_every_real_token, quick
from tests.training.test_rounds import launch
from training.engine import kto
from training.engine.common import load_policy, load_tokenizer
from training.engine.config import BaseConfig, KTOConfig
from training.engine.generate import encode_prompt
from training.engine.kto import train_kto
from training.models import RoundMetric, TrainingRound
from training.rounds import run_round

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parents[2]
IDS = torch.tensor([[1, 4, 30, 31, 32, 2, 5, 40, 41, 42]])  # <s><|user|>…</s><|assistant|>…


def test_loss_starts_at_one_half_and_falls_while_the_reference_stays_put(tiny, tmp_path, spy):
    seen = spy(kto)
    start = {}
    # Before the first step the adapter is zero, so π = π_ref: every log-ratio and the KL estimate are 0, and each
    # answer's loss is 1 - σ(0) = 0.5.
    seen["before_training"] = lambda trainer: start.update(trainer.evaluate(trainer.train_dataset))
    rows = write_jsonl(tmp_path / "unpaired.jsonl", marker_unpaired(16))
    out = tmp_path / "kto"

    result = train_kto(settings(KTOConfig, tiny.policy, max_steps=20, learning_rate=2e-3), rows, str(out))

    trainer = seen["trainer"]
    assert start["eval_loss"] == pytest.approx(0.5, abs=1e-6)
    assert start["eval_rewards/chosen"] == start["eval_rewards/rejected"] == 0
    end = trainer.evaluate(trainer.train_dataset)
    assert end["eval_loss"] < start["eval_loss"] - 0.05, end
    assert end["eval_rewards/chosen"] > end["eval_rewards/rejected"]
    assert result.steps == 20 and result.metrics["train_loss"] < 0.5
    assert {"loss", "kl", "reward_desirable", "reward_undesirable", "eval_rows"} <= result.eval_report.keys()
    assert result.eval_report["eval_rows"] == 8  # 4 of 16 prompts held out, two rated answers each

    # Only the adapter trained; with it disabled the model is the untouched base, i.e. the reference.
    model, before = trainer.model.eval(), seen["before"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed == {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed and all("lora_" in name for name in changed)
    base = AutoModelForCausalLM.from_pretrained(tiny.policy).eval()
    with torch.no_grad(), model.disable_adapter():
        torch.testing.assert_close(model(IDS).logits, base(IDS).logits, rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.allclose(model(IDS).logits, base(IDS).logits)
        # The saved adapter, loaded onto the base, is the trained policy.
        reloaded = load_policy(BaseConfig(model_name_or_path=str(out))).eval()
        torch.testing.assert_close(reloaded(IDS).logits, model(IDS).logits)


def test_weights_reach_the_trainer_and_an_unlabelled_file_is_refused(tiny, tmp_path, spy):
    seen = spy(kto)
    rows = write_jsonl(tmp_path / "unpaired.jsonl", marker_unpaired(8))
    config = settings(KTOConfig, tiny.policy, max_steps=2, beta=0.3, desirable_weight=1.2, undesirable_weight=0.9)

    train_kto(config, rows, str(tmp_path / "kto"))

    trainer = seen["trainer"]
    assert (trainer.beta, trainer.desirable_weight, trainer.undesirable_weight) == (0.3, 1.2, 0.9)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(4))
    with pytest.raises(ValueError, match="missing column.*completion, label"):
        train_kto(config, pairs, str(tmp_path / "again"))


def test_the_command_line_runs_the_kto_stage(tiny, tmp_path):
    rows = write_jsonl(tmp_path / "unpaired.jsonl", marker_unpaired(8))

    run = subprocess.run(
        [sys.executable, "-m", "training.engine", "kto", "--data", str(rows), "--out", str(tmp_path / "kto")]
        + ["--set", f"model_name_or_path={tiny.policy}", "--set", "max_steps=2", "--set", "max_length=128"]
        + ["--set", "desirable_weight=1.2", "--progress-json"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    steps = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(line["step"], line["total"]) for line in steps[:-1]] == [(1, 2), (2, 2)]
    result = steps[-1]["result"]
    assert result["steps"] == 2 and math.isfinite(result["metrics"]["train_loss"])
    assert (tmp_path / "kto" / "adapter_model.safetensors").is_file()


@pytest.fixture
def rated_project(project, annotator, tmp_path):
    """Eight prompts with two answers each, rated through the queue: the one with the marker 5, the other 1."""
    project.task_kinds = ["rating"]
    project.save(update_fields=["task_kinds"])
    pairs = marker_pairs(8, style="standard")
    rows = [{"prompt": f"{row['prompt']} ({n})", "responses": [row["chosen"], row["rejected"]]} for n, row in
            enumerate(pairs)]  # fmt: skip
    import_file(project, write_jsonl(tmp_path / "responses.jsonl", rows), format="responses")
    scores = {row["chosen"]: 5 for row in pairs} | {row["rejected"]: 1 for row in pairs}
    while lease := project.next_assignment(annotator):
        lease.submit({"score": scores[lease.task.responses.get().content]}, user=annotator)
    return project


@pytest.mark.django_db(transaction=True)
class TestRound:
    def test_a_kto_round_trains_on_the_rated_answers_registers_the_policy_and_samples(self, rated_project, policy):
        training_round = launch(rated_project, policy, "kto", settings_={"kto.beta": "0.2"})
        assert list(training_round.config) == ["kto", "sample"] and training_round.config["kto"]["beta"] == 0.2
        assert training_round.snapshot.kind == DatasetSnapshot.Kind.UNPAIRED

        training_round = run_round(training_round.pk)

        assert training_round.status == "succeeded", training_round.error
        rows = [json.loads(line) for line in Path(training_round.snapshot.file.path).read_text().splitlines()]
        assert sorted(row["label"] for row in rows) == [False] * 8 + [True] * 8
        version = ModelVersion.objects.get(kind="policy", training_round=training_round)
        assert version.snapshot_sha256 == training_round.snapshot.sha256 and version.config["beta"] == 0.2
        assert {"loss", "kl", "eval_rows"} <= set(version.eval_report), version.eval_report
        assert RoundMetric.objects.filter(training_round=training_round, stage="kto").exists()
        assert Response.objects.filter(model_version=version, source="model").exists()  # its samples reached the queue
        assert "kto step 3/3" in training_round.log_tail

    def test_a_project_without_ratings_is_refused_at_launch_and_nothing_is_queued(self, project, policy, tmp_path):
        pairs = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in marker_pairs(4)]
        import_file(project, write_jsonl(tmp_path / "pairs.jsonl", pairs))  # votes, no ratings: nothing for KTO

        with pytest.raises(ValidationError) as refused:
            launch(project, policy, "kto")

        assert "KTO trains on rated answers" in refused.value.message_dict["method"][0]
        assert not TrainingRound.objects.exists() and not DatasetSnapshot.objects.exists()


def test_on_every_model_family_the_prompt_is_the_templates_and_answers_end_their_turn(family, tmp_path, spy):
    tokenizer = load_tokenizer(family.policy)
    rows = [{**row, "prompt": PROMPT} for row in marker_unpaired(2)]
    seen = spy(kto)

    train_kto(quick(KTOConfig, family.policy), write_jsonl(tmp_path / "unpaired.jsonl", rows), str(tmp_path / "kto"))

    prepared = seen["trainer"].train_dataset
    assert prepared[0]["prompt_ids"] == encode_prompt(PROMPT, tokenizer)
    end_of_turn = tokenizer.convert_tokens_to_ids(STOPS[family.like.name][0])
    assert all(end_of_turn in row["completion_ids"] for row in prepared)  # KTO learns to stop, as DPO does
    # pad = eos must not hide the eos that ends a turn.
    assert attends_to_every_real_token(
        seen["trainer"], {len(r["prompt_ids"]) + len(r["completion_ids"]) for r in prepared}
    )


def test_continuing_an_adapter_the_reference_is_that_adapter_and_only_the_trained_one_is_saved(tiny, tmp_path, spy):
    seen, start = spy(kto), {}
    seen["before_training"] = lambda trainer: start.update(trainer.evaluate(trainer.train_dataset))
    parent = save_adapter(tiny.policy, tmp_path / "policy-v1")  # random B: far from the base
    rows = write_jsonl(tmp_path / "unpaired.jsonl", marker_unpaired(16))
    out = tmp_path / "kto"

    train_kto(settings(KTOConfig, str(parent), max_steps=2), rows, str(out))

    # π_ref is the policy the stage starts from (TRL's frozen copy of it), not the base under it: rewards start at 0.
    assert start["eval_loss"] == pytest.approx(0.5, abs=1e-6)
    assert start["eval_rewards/chosen"] == start["eval_rewards/rejected"] == 0
    assert [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("checkpoint-")] == []
    assert load_policy(BaseConfig(model_name_or_path=str(out))) is not None
