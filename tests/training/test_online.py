"""RLOO and GRPO on TRL's trainers: each trains only the adapter against the tiny reward model, reports KL from the
first step, scores exactly as PPO scores, stops within a step with a checkpoint and reports what PPO reports; their
configs refuse bad values at launch, a round with a given reward model registers the policy and queues its samples,
and the command line runs them."""

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

from annotate.models import DatasetSnapshot, Response
from models_registry.models import ModelVersion
from tests.training.conftest import QUESTIONS, save_adapter, settings, write_jsonl
from tests.training.test_families import ANSWER, PROMPT, STOPS
from tests.training.test_round_pages import launch_url, staff_lead  # noqa: F401 (a fixture)
from tests.training.test_rounds import launch, pairs_project  # noqa: F401 (a fixture)
from training.engine import common, online
from training.engine.__main__ import main
from training.engine.common import load_policy, load_reward_model, load_tokenizer
from training.engine.config import BaseConfig, GRPOConfig, RLOOConfig
from training.engine.generate import encode_prompt, reward_model_scores, score, stop_token_ids
from training.engine.memory import Architecture, estimate_memory
from training.engine.online import reward_function, reward_scorer, train_grpo, train_rloo
from training.models import RoundMetric, TrainingRound
from training.rounds import run_round

# TRL's trainers still call transformers' deprecated names for activation checkpointing.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing_disable` is deprecated:FutureWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"rloo": (RLOOConfig, train_rloo), "grpo": (GRPOConfig, train_grpo)}
# What PPO's eval report holds (ppo.evaluate): the round page and the loop benchmark compare the methods on it.
PPO_REPORT = {"mean_reward", "reference_mean_reward", "kl", "kl_per_response", "samples", "mean_response_tokens"}
IDS = torch.tensor([[0, 4, 45, 78, 1, 5, 10, 20]])


@pytest.fixture
def prompts(tmp_path):
    # As a pairs export has them: message lists, each prompt on several rows (one per pair).
    rows = [
        {"prompt": [{"role": "user", "content": q}], "chosen": "a", "prompt_id": f"p{i}"}
        for i, q in enumerate(QUESTIONS)
    ]
    return write_jsonl(tmp_path / "prompts.jsonl", rows + rows)


def quick(stage, model, **overrides):
    """Two short steps: 2 prompts × 4 responses of at most 6 tokens each."""
    defaults = {"max_steps": 2, "per_device_batch_size": 4, "gradient_accumulation_steps": 2, "max_new_tokens": 6}
    return settings(STAGES[stage][0], model, **{**defaults, **overrides})


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_trains_only_the_adapter_reports_kl_from_the_start_and_ppos_eval_report(stage, tiny, prompts, tmp_path, spy):
    seen = spy(online)
    calls = []
    out = tmp_path / stage

    result = STAGES[stage][1](quick(stage, tiny.policy), prompts, tiny.reward, out, lambda *c: calls.append(c) or False)

    assert [(step, total) for step, total, _ in calls] == [(1, 2), (2, 2)]
    for _, _, metrics in calls:
        assert {"kl", "reward", "raw_reward", "eos_fraction", "entropy", "loss"} <= metrics.keys(), metrics.keys()
        assert all(math.isfinite(value) for value in metrics.values()), metrics
        assert not any(name.startswith("rewards/") for name in metrics)  # TRL's copies of reward and reward_std
    assert calls[0][2]["kl"] == 0  # nothing has moved before the first update, and no dropout blurs it
    # TRL's reward is the reward model's score with the missing-EOS penalty (-1) on the responses cut off.
    first = calls[0][2]
    assert first["reward"] == pytest.approx(first["raw_reward"] - (1 - first["eos_fraction"]), abs=1e-5)
    assert result.eval_report.keys() == PPO_REPORT and result.eval_report["samples"] == round(0.25 * len(QUESTIONS))
    assert (result.steps, result.stopped) == (2, False)

    # Only the adapter trained; disabled, the model is the untouched base: the reference.
    trainer = seen["trainer"]
    model, before = trainer.model.eval(), seen["before"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed == {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed and all("lora_" in name for name in changed)
    base = AutoModelForCausalLM.from_pretrained(tiny.policy).eval()
    with torch.no_grad():
        with model.disable_adapter():
            torch.testing.assert_close(model(IDS).logits, base(IDS).logits, rtol=0, atol=0)
        assert not torch.allclose(model(IDS).logits, base(IDS).logits)
        reloaded = load_policy(BaseConfig(model_name_or_path=str(out))).eval()
        torch.testing.assert_close(reloaded(IDS).logits, model(IDS).logits)


def test_continuing_a_policy_adapter_the_reference_is_where_it_started_and_samples_keep_the_stages_length(
    tiny, prompts, tmp_path
):
    # A round's base is usually a registered policy: an adapter, which TRL keeps training against a frozen copy.
    adapter = save_adapter(tiny.policy, tmp_path / "policy-v1")
    calls = []

    result = train_grpo(
        quick("grpo", adapter), prompts, tiny.reward, tmp_path / "grpo", lambda *c: calls.append(c) or False
    )

    assert calls[0][2]["kl"] == 0 and calls[0][2]["completions/max_length"] <= 6
    # Its own generation settings, not the base checkpoint's defaults (20 tokens), in the eval report too.
    assert result.eval_report["mean_response_tokens"] <= 6
    # The eval report's KL is to that starting policy too (0.079 per token to the base under it, before): ~0 here.
    assert abs(result.eval_report["kl"]) < 0.02, result.eval_report
    assert load_policy(BaseConfig(model_name_or_path=str(tmp_path / "grpo"))) is not None  # saved, loadable
    assert not (tmp_path / "grpo" / "ref").exists()  # the trained adapter alone, not TRL's frozen copy beside it


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_base_with_activation_checkpointing_trains_a_float32_adapter(
    dtype, tiny, prompts, tmp_path, spy
):
    seen, calls = spy(online), []
    config = quick("rloo", tiny.policy, dtype=dtype, activation_checkpointing=True, eval_fraction=0.0)

    train_rloo(config, prompts, tiny.reward, tmp_path / "rloo", lambda *c: calls.append(c) or False)

    assert len(calls) == 2 and all(math.isfinite(v) for _, _, metrics in calls for v in metrics.values())
    weights = dict(seen["trainer"].model.named_parameters())
    assert {p.dtype for name, p in weights.items() if "lora_" in name} == {torch.float32}
    assert weights["base_model.model.model.layers.0.mlp.up_proj.base_layer.weight"].dtype == getattr(torch, dtype)


def test_the_reward_function_scores_as_the_reward_model_scores_the_same_conversations(tiny):
    tokenizer = load_tokenizer(tiny.policy, padding_side="left")
    reward_model = load_reward_model(tiny.reward, torch.device("cpu"))
    eos_ids = stop_token_ids(AutoModelForCausalLM.from_pretrained(tiny.policy), tokenizer)
    logged = []
    reward = reward_function(reward_scorer(reward_model, tokenizer, eos_ids), tokenizer, eos_ids, -1.0, "cpu")
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS[:3]]
    answers = ["The capital of France is Paris.", "Eight.", "Here is a poem"]
    # As TRL hands them: each answer's tokens up to and including its EOS; the last ran out of tokens without one.
    completion_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    completion_ids = [ids + [tokenizer.eos_token_id] for ids in completion_ids[:2]] + completion_ids[2:]

    rewards = reward(
        prompts=prompts, completions=answers, completion_ids=completion_ids, log_metric=lambda *m: logged.append(m)
    )

    # A finished answer: what the reward model gives the conversation as the chat template writes it (how reward
    # training, PPO and the registry's evaluation read it).
    written = [[*p, {"role": "assistant", "content": a}] for p, a in zip(prompts[:2], answers[:2], strict=True)]
    torch.testing.assert_close(torch.tensor(rewards[:2]), score(str(tiny.reward), written), rtol=0, atol=1e-5)
    # A cut-off answer: the reward model on the tokens as they are, and the missing-EOS penalty.
    cut = torch.tensor([encode_prompt(prompts[2], tokenizer) + completion_ids[2]])
    expected = reward_model_scores(reward_model, cut, torch.ones_like(cut)).item() - 1.0
    assert rewards[2] == pytest.approx(expected, abs=1e-5)
    raw = dict(logged)
    assert raw["eos_fraction"] == pytest.approx(2 / 3)
    assert raw["raw_reward"] == pytest.approx(sum(rewards) / 3 + 1 / 3, abs=1e-6)  # before the penalty


def test_on_every_model_family_a_finished_answer_is_scored_as_the_template_writes_the_conversation(family):
    tokenizer = load_tokenizer(family.policy, padding_side="left")
    reward_model = load_reward_model(family.reward, torch.device("cpu"))
    eos_ids = stop_token_ids(AutoModelForCausalLM.from_pretrained(family.policy), tokenizer)
    reward = reward_function(reward_scorer(reward_model, tokenizer, eos_ids), tokenizer, eos_ids, -1.0, "cpu")
    end_of_turn = tokenizer.convert_tokens_to_ids(STOPS[family.like.name][0])
    # As a policy that learnt the template samples it: the answer's tokens as the template writes them, up to and
    # including its end-of-turn token (ChatML's <|im_end|>, Phi-3's <|end|>), and no further.
    written = tokenizer.apply_chat_template([*PROMPT, ANSWER])["input_ids"]
    prompt_length = len(encode_prompt(PROMPT, tokenizer))
    answer_ids = written[prompt_length : written.index(end_of_turn, prompt_length) + 1]

    [given] = reward(prompts=[PROMPT], completions=[ANSWER["content"]], completion_ids=[answer_ids])

    # What reward training and the registry read: the conversation closed as the template closes it (ChatML's newline
    # after <|im_end|>, Phi-3's <|endoftext|> after <|end|>).
    assert given == pytest.approx(score(str(family.reward), [[*PROMPT, ANSWER]]).item(), abs=1e-5)


def test_trl_renders_a_string_prompt_as_encode_prompt_does(tiny, tmp_path, spy):
    seen = spy(online)
    strings = write_jsonl(tmp_path / "strings.jsonl", [{"prompt": q} for q in QUESTIONS] + [{"prompt": "word " * 200}])

    train_rloo(quick("rloo", tiny.policy, max_steps=1, eval_fraction=0.0), strings, tiny.reward, tmp_path / "rloo")

    trainer, tokenizer = seen["trainer"], load_tokenizer(tiny.policy)
    rows = list(trainer.train_dataset["prompt"])
    assert len(rows) == len(QUESTIONS)  # the prompt with no room for an answer is left out
    prompt_ids, _, _ = trainer._tokenize_prompts(rows)
    assert [tokenizer.decode(ids) for ids in prompt_ids][0] == f"<s><|user|>{QUESTIONS[0]}</s><|assistant|>"
    assert prompt_ids == [encode_prompt(q, tokenizer) for q in QUESTIONS]


def test_off_cuda_the_plain_lm_head_gives_trls_log_probs_at_the_sampling_temperature(
    tiny, prompts, tmp_path, monkeypatch
):
    compared = []
    use_plain_lm_head = common.use_plain_lm_head
    ids = torch.cat([IDS, IDS.flip(1)])
    labels = ids.masked_fill(torch.arange(ids.shape[1]) < 4, -100)  # the "completion": the last 4 tokens

    def compare(trainer):
        with torch.no_grad():  # as if trained a little, so that the adapter counts
            for name, p in trainer.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)

        def outputs():
            with torch.no_grad():
                return trainer.model(input_ids=ids, labels=labels, fused_lm_head=True)

        trls = outputs()
        use_plain_lm_head(trainer)
        compared.append((trls, outputs()))

    monkeypatch.setattr(common, "use_plain_lm_head", compare)
    train_rloo(quick("rloo", tiny.policy, max_steps=1, temperature=0.7), prompts, tiny.reward, tmp_path / "rloo")

    [(trls, plain)] = compared
    torch.testing.assert_close(plain.label_mask, trls.label_mask, rtol=0, atol=0)
    torch.testing.assert_close(plain.log_probs, trls.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain.entropy, trls.entropy, rtol=1e-5, atol=1e-5)


def test_stops_within_one_step_with_a_checkpoint(tiny, prompts, tmp_path):
    calls = []
    out = tmp_path / "grpo"

    def progress(step, total, metrics):
        calls.append(step)
        return True

    result = train_grpo(quick("grpo", tiny.policy, max_steps=10), prompts, tiny.reward, out, progress)

    assert calls == [1] and (result.steps, result.stopped) == (1, True)
    assert (out / "checkpoint-1" / "adapter_model.safetensors").is_file()  # resumable from where it stopped
    assert result.eval_report == {}


def test_resumes_from_the_checkpoint_it_stopped_at(tiny, prompts, tmp_path):
    out, resumed = tmp_path / "rloo", []
    config = quick("rloo", tiny.policy, max_steps=3)
    assert train_rloo(config, prompts, tiny.reward, out, lambda step, *_: step == 1).stopped

    config.resume = True
    result = train_rloo(config, prompts, tiny.reward, out, lambda *call: resumed.append(call) or False)

    assert [step for step, _, _ in resumed] == [2, 3] and (result.steps, result.stopped) == (3, False)
    assert resumed[0][2]["kl"] != 0  # the adapter came back trained from checkpoint-1


@pytest.mark.parametrize(
    ("config_class", "values", "field"),
    [
        (RLOOConfig, {"num_generations": 1}, "num_generations"),
        (RLOOConfig, {"num_generations": 3}, "num_generations"),  # 4 × 4 responses make no whole groups of 3
        (GRPOConfig, {"beta": -0.1}, "beta"),
        (GRPOConfig, {"max_new_tokens": 1024, "max_length": 1024}, "max_new_tokens"),
        (RLOOConfig, {"use_lora": False}, "use_lora"),
        (RLOOConfig, {"adapter": "prompt_tuning"}, "adapter"),
        (GRPOConfig, {"loss_type": "sigmoid"}, "loss_type"),
        (GRPOConfig, {"scale_rewards": "yes"}, "scale_rewards"),
        (RLOOConfig, {"temperature": 0}, "temperature"),
    ],
)
def test_configs_refuse_bad_values_by_name(config_class, values, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        config_class(**values)


def test_the_memory_estimate_holds_the_reward_model_and_the_cache_of_every_response_of_a_step():
    qwen = Architecture("qwen2", 151936, 896, 4864, 24, 14, 2, 64, tied=True, qkv_bias=True, mlp_bias=False)
    bigger_reward = Architecture("qwen2", 151936, 1536, 8960, 28, 12, 2, 128, tied=True, qkv_bias=True, mlp_bias=False)
    kv_per_token = 2 * 24 * 2 * 64 * 2  # keys and values of every layer, bfloat16
    one = estimate_memory(RLOOConfig(dtype="bfloat16", gradient_accumulation_steps=1), qwen, reward_arch=qwen)
    four = estimate_memory(GRPOConfig(dtype="bfloat16", gradient_accumulation_steps=4), qwen, reward_arch=qwen)

    # No value head and no second policy: the reward model, and the KV cache of the step's 4 or 16 responses.
    assert one.extra_models == qwen.parameters(head=1) * 2 + 4 * 1024 * kv_per_token
    assert four.extra_models - one.extra_models == 12 * 1024 * kv_per_token
    assert four.activations == one.activations and four.weights == one.weights  # a micro-batch at a time
    bigger = estimate_memory(RLOOConfig(dtype="bfloat16"), qwen, reward_arch=bigger_reward)
    assert bigger.extra_models > estimate_memory(RLOOConfig(dtype="bfloat16"), qwen, reward_arch=qwen).extra_models


def test_the_command_line_wants_a_reward_model_for_the_online_stages(tmp_path, capsys):
    for stage in ("rloo", "grpo"):
        with pytest.raises(SystemExit) as exit:
            main([stage, "--prompts", "x.jsonl", "--out", str(tmp_path)])
        assert exit.value.code == 2
        assert "--reward-model: required by ppo, rloo, grpo" in capsys.readouterr().err


def test_the_command_line_runs_grpo_against_a_reward_model(tiny, prompts, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "training.engine", "grpo", "--prompts", str(prompts), "--out", str(tmp_path / "grpo")]
        + ["--reward-model", str(tiny.reward), "--set", f"model_name_or_path={tiny.policy}", "--set", "max_steps=2"]
        + ["--set", "max_new_tokens=6", "--set", "max_length=128", "--set", "loss_type=dr_grpo", "--progress-json"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [(line["step"], line["total"]) for line in lines[:-1]] == [(1, 2), (2, 2)]
    assert "kl" in lines[0]["metrics"]
    result = lines[-1]["result"]
    assert (result["steps"], result["stopped"]) == (2, False) and result["eval_report"].keys() == PPO_REPORT
    assert (tmp_path / "grpo" / "adapter_model.safetensors").is_file()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "options", "field"),
    [
        ("rloo", {"settings_": {"num_generations": "3"}}, "rloo.num_generations"),
        ("grpo", {"settings_": {"grpo.beta": "-1"}}, "grpo.beta"),
        ("grpo", {"settings_": {"use_lora": "false"}}, "grpo.use_lora"),
        ("rloo", {"reward_model": "reward-v9"}, "reward_model"),
        ("dpo", {"settings_": {"num_generations": "2"}}, "num_generations"),
    ],
)
def test_a_round_with_bad_settings_is_refused_at_launch_naming_the_field(
    pairs_project,  # noqa: F811 (the fixture)
    policy,
    method,
    options,
    field,
):
    with pytest.raises(ValidationError) as refused:
        launch(pairs_project, policy, method, **options)
    assert field in refused.value.message_dict, refused.value.message_dict
    assert not TrainingRound.objects.exists() and not DatasetSnapshot.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_rloo_round_with_a_reward_model_registers_the_policy_and_queues_its_samples(
    pairs_project,  # noqa: F811 (the fixture)
    policy,
    tiny,
):
    reward = ModelVersion.register(project=pairs_project, kind="reward", base_model=str(tiny.reward))
    settings_ = {"rloo.num_generations": "2", "rloo.max_new_tokens": "8", "rloo.beta": "0.1"}

    training_round = launch(pairs_project, policy, "rloo", reward_model="reward-v1", settings_=settings_)
    assert list(training_round.config) == ["rloo", "sample"] and training_round.reward_version == reward
    training_round = run_round(training_round.pk)

    assert training_round.status == "succeeded", training_round.error
    version = ModelVersion.objects.get(kind="policy", training_round=training_round)
    assert version.config["num_generations"] == 2 and version.config["beta"] == 0.1
    assert {"mean_reward", "reference_mean_reward", "kl"} <= set(version.eval_report), version.eval_report
    assert ModelVersion.objects.filter(kind="reward").count() == 1  # the given one: none trained
    assert "rloo/kl" in training_round.metric_series() and RoundMetric.objects.filter(stage="rloo").count() == 3
    assert Response.objects.filter(model_version=version, source="model").exists()  # its samples reached the queue
    assert "rloo step 3/3" in training_round.log_tail


@pytest.mark.django_db(transaction=True)
def test_a_grpo_round_without_a_reward_model_trains_one_first_and_registers_both(
    pairs_project,  # noqa: F811 (the fixture)
    policy,
):
    settings_ = {"grpo.num_generations": "2", "grpo.max_new_tokens": "8", "grpo.loss_type": "dr_grpo"}

    training_round = launch(pairs_project, policy, "grpo", settings_=settings_)
    assert list(training_round.config) == ["reward", "grpo", "sample"]
    training_round = run_round(training_round.pk)

    assert training_round.status == "succeeded", training_round.error
    reward = ModelVersion.objects.get(kind="reward", training_round=training_round)
    version = ModelVersion.objects.get(kind="policy", training_round=training_round)
    assert version.config["loss_type"] == "dr_grpo" and "kl" in version.eval_report
    assert "grpo/kl" in training_round.metric_series() and "grpo step 3/3" in training_round.log_tail
    assert reward.version == 1 and "mean_reward" in version.eval_report  # scored by the round's own reward model


@pytest.mark.django_db
def test_the_admin_launch_page_offers_both_methods_with_their_settings_and_refuses_a_bad_one(
    client,
    staff_lead,  # noqa: F811 (the fixture)
    pairs_project,  # noqa: F811 (the fixture)
    policy,
):
    client.force_login(staff_lead)
    page = client.get(launch_url(pairs_project)).content.decode()
    assert '<option value="rloo">' in page and '<option value="grpo">' in page
    assert "<strong>rloo</strong> (methods: rloo)" in page and "<strong>grpo</strong> (methods: grpo)" in page
    for setting in ("num_generations", "normalize_advantages", "scale_rewards", "missing_eos_penalty"):
        assert f"<code>{setting}</code>" in page

    form = {"project": pairs_project.pk, "method": "grpo", "base": policy, "settings": "num_generations=1"}
    refused = client.post(launch_url(), form).content.decode()
    assert "grpo.num_generations" in refused and not TrainingRound.objects.exists()
