"""The reward stage on ratings: learns the score and the labels out of sample, combines them with the lead's weights
wherever the model is loaded, mixes in pairs, and leaves a model trained on pairs as it was."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import FAMILIES, MARKER, TOKENIZERS, marker_pairs, settings, write_jsonl
from training.engine import reward
from training.engine.common import load_reward_model, load_tokenizer
from training.engine.config import PPOConfig, RewardConfig
from training.engine.generate import reward_model_scores, score
from training.engine.launcher import run_launched
from training.engine.memory import estimate_memory, read_architecture
from training.engine.model_files import REWARD_HEAD_FILE
from training.engine.ppo import train_ppo
from training.engine.reward import _tokenize, spearman, train_reward

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
RUDE = "rude"  # raters tick "unsafe" on answers that have it, whatever their score


def rated_rows(n: int, *, seed: int = 0) -> list[dict]:
    """An unpaired export's rows on a 1-5 scale: each marker pair's answers, the one with MARKER rated 5 and the
    other 1; RUDE in a random half of the answers, which every rater marked unsafe."""
    rng = random.Random(seed)
    rows = []
    for pair in marker_pairs(n, seed=seed):
        for side, rating in (("chosen", 5.0), ("rejected", 1.0)):
            text = pair[side][0]["content"]
            unsafe = rng.random() < 0.5
            if unsafe:
                words = text.split()
                words.insert(rng.randrange(len(words) + 1), RUDE)
                text = " ".join(words)
            rows.append(
                {
                    "prompt": pair["prompt"],
                    "completion": [{"role": "assistant", "content": text}],
                    "label": rating > 3,
                    "score": rating,
                    "ratings": 1,
                    "prompt_id": pair["prompt_id"],
                    "response_id": pair[f"{side}_id"],
                    "model_version": None,
                    "scaled_score": (rating - 1) / 4,
                    "label_shares": [{"label": "unsafe", "share": float(unsafe)}, {"label": "off-topic", "share": 0.0}],
                }
            )
    return rows


@pytest.fixture
def rated(tmp_path):
    return write_jsonl(tmp_path / "unpaired.jsonl", rated_rows(48))


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A rating reward model trained once for the tests that read it: (its directory, its StageResult)."""
    folder = tmp_path_factory.mktemp("rating-rm")
    data = write_jsonl(folder / "unpaired.jsonl", rated_rows(48))
    config = settings(
        RewardConfig, tiny.reward, objective="ratings", label_weights="unsafe:-2", max_steps=80, learning_rate=5e-3
    )
    return folder / "rm", train_reward(config, str(data), str(folder / "rm"))


def test_learns_the_rating_rule_on_held_out_answers(tiny, trained, rated, tmp_path):
    out, result = trained
    # Before training (a step at a vanishing rate): the fresh head's scores say nothing about the ratings.
    untrained = settings(RewardConfig, tiny.reward, objective="ratings", max_steps=1, learning_rate=1e-12)
    before = train_reward(untrained, str(rated), str(tmp_path / "untrained")).eval_report

    report = result.eval_report
    assert report["eval_ratings"] == 24  # a quarter of the 48 prompts, two answers each
    assert report["rating_pairs"] == 12 * 12  # every held-out 5 against every held-out 1
    assert report["rating_pair_accuracy"] >= 0.85, report
    assert report["rating_spearman"] > before["rating_spearman"] + 0.3, (before, report)
    assert report["label_mae"] < before["label_mae"]
    assert result.steps == 80 and result.metrics["train_loss"] < 1.5
    head = json.loads((out / REWARD_HEAD_FILE).read_text())
    assert head == {"objective": "ratings", "outputs": ["score", "unsafe", "off-topic"], "weights": [1.0, -2.0, 0.0]}


def test_the_loaded_model_returns_the_weighted_sum_of_its_outputs(trained):
    out, _ = trained
    tokenizer = load_tokenizer(out)
    rows = rated_rows(12)  # answers it trained on, and some it held out
    conversations = [row["prompt"] + row["completion"] for row in rows]
    unsafe = torch.tensor([row["label_shares"][0]["share"] == 1.0 for row in rows])
    cpu = torch.device("cpu")
    weighted = score(str(out), conversations, device=cpu)

    head = json.loads((out / REWARD_HEAD_FILE).read_text())
    (out / REWARD_HEAD_FILE).write_text(json.dumps({**head, "weights": [1.0, 0.0, 0.0]}))
    plain = score(str(out), conversations, device=cpu)

    # -2 × the predicted share of raters ticking unsafe: the answers with RUDE lose more.
    penalty = plain - weighted
    assert (penalty > 0).all()
    assert penalty[unsafe].mean() > penalty[~unsafe].mean(), penalty
    # Plain weights: σ(score output), the predicted rating on [0, 1], which the marker raises.
    marked = torch.tensor([MARKER in row["completion"][0]["content"] for row in rows])
    assert ((plain > 0) & (plain < 1)).all() and plain[marked].min() > plain[~marked].max()

    # reward_model_scores reads the same sum, and the three logits are still there under it.
    model = load_reward_model(out, cpu)
    text = tokenizer.apply_chat_template(conversations[0], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    torch.testing.assert_close(reward_model_scores(model, ids, torch.ones_like(ids)), plain[:1])
    assert model.score.head.out_features == 3
    (out / REWARD_HEAD_FILE).write_text(json.dumps(head))


def test_pairs_and_ratings_train_one_model(tiny, rated, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(32, seed=2))
    config = settings(RewardConfig, tiny.reward, objective="both", max_steps=30, learning_rate=2e-3)

    logged = set()
    progress = lambda step, total, metrics: logged.update(metrics) or False  # noqa: E731
    result = train_reward(config, str(pairs), str(tmp_path / "rm"), progress, ratings_file=str(rated))

    report = result.eval_report
    assert (report["eval_pairs"], report["eval_ratings"]) == (8, 24)
    assert report["accuracy"] >= 0.75 and report["rating_pair_accuracy"] >= 0.75, report
    assert {"rating_loss", "label_loss", "pairs_loss", "accuracy"} <= logged  # each part of the loss, logged
    head = json.loads((tmp_path / "rm" / REWARD_HEAD_FILE).read_text())
    assert head["objective"] == "both" and head["weights"] == [1.0, 0.0, 0.0]

    with pytest.raises(ValueError, match="ratings_file"):
        train_reward(config, str(pairs), str(tmp_path / "again"))


def test_stops_when_asked_and_resumes_from_its_checkpoint(tiny, rated, tmp_path):
    out = str(tmp_path / "rm")
    config = settings(RewardConfig, tiny.reward, objective="ratings", max_steps=6, save_steps=2)
    first = train_reward(config, str(rated), out, lambda step, total, metrics: step == 3)
    assert (first.steps, first.stopped) == (3, True)
    assert (tmp_path / "rm" / "checkpoint-3").is_dir() and (tmp_path / "rm" / REWARD_HEAD_FILE).is_file()

    steps = []
    resumed = settings(RewardConfig, tiny.reward, objective="ratings", max_steps=6, save_steps=2, resume=True)
    second = train_reward(resumed, str(rated), out, lambda step, total, metrics: steps.append(step) or False)
    assert steps == [4, 5, 6] and (second.steps, second.stopped) == (6, False)


def test_full_fine_tuning_saves_a_whole_model_that_loads_with_its_outputs(tiny, rated, tmp_path, spy):
    seen = spy(reward)
    out = tmp_path / "rm"
    config = settings(RewardConfig, tiny.reward, objective="ratings", use_lora=False, max_steps=2, learning_rate=1e-4)

    train_reward(config, str(rated), str(out))

    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "score", "1": "unsafe", "2": "off-topic"}
    ids = torch.tensor([[1, 10, 20, 30, 40, 2]])
    with torch.no_grad():
        logits = seen["trainer"].model.eval()(ids).logits  # (1, 3)
        expected = torch.sigmoid(logits) @ torch.tensor([1.0, 0.0, 0.0])  # the default weights: the score alone
        torch.testing.assert_close(load_reward_model(out, torch.device("cpu"))(ids).logits[:, 0], expected)


def test_a_weight_for_a_label_the_data_lacks_is_refused(tiny, rated, tmp_path):
    config = settings(RewardConfig, tiny.reward, objective="ratings", label_weights="toxic:-1", max_steps=1)
    with pytest.raises(ValueError, match="label_weights: 'toxic' is not a label"):
        train_reward(config, str(rated), str(tmp_path / "rm"))


def test_a_model_trained_on_pairs_has_one_output_and_no_head_file(tiny, tmp_path, spy):
    seen = spy(reward)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(16))
    out = tmp_path / "rm"
    train_reward(settings(RewardConfig, tiny.reward, max_steps=2), str(pairs), str(out))

    assert not (out / REWARD_HEAD_FILE).exists()
    model = load_reward_model(out, torch.device("cpu"))
    ids = torch.tensor([[1, 10, 20, 30, 40, 2]])
    with torch.no_grad():  # the raw logit, as before: no squashing, no weights
        torch.testing.assert_close(model(ids).logits, seen["trainer"].model.eval()(ids).logits)
    assert isinstance(model.score, torch.nn.Linear)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective": "scores"}, "objective: must be one of pairs, ratings, both"),
        ({"objective": "ratings", "label_weights": "unsafe=-2"}, "label_weights: must be name:weight pairs"),
        ({"objective": "ratings", "label_weights": "unsafe:-2, unsafe:1"}, "each name once"),
        ({"label_weights": "unsafe:-2"}, "label_weights: needs objective=ratings or both"),
        ({"objective": "both", "pairs_weight": 0}, "pairs_weight: must be > 0"),
    ],
)
def test_config_refuses_bad_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        RewardConfig.from_dict({"model_name_or_path": "m", **overrides})


def test_spearman_is_the_correlation_of_ranks():
    assert spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 25.0, 100.0])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # ties share their mean rank: ranks (0.5, 0.5, 2) against (0, 1, 2)
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(0.8660254)
    assert spearman(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0])) is None


def test_ppo_trains_against_a_rating_reward_model(tiny, trained, tmp_path):
    out, _ = trained
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rated_rows(8))  # an unpaired export's prompts
    config = settings(
        PPOConfig, tiny.policy, max_steps=2, per_device_batch_size=4, max_new_tokens=6, ppo_epochs=1,
        missing_eos_penalty=None,
    )  # fmt: skip
    steps = []

    result = train_ppo(config, str(prompts), str(out), tmp_path / "ppo", lambda *call: steps.append(call) or False)

    assert result.steps == 2 and not result.stopped
    # The reward PPO saw is the weighted sum σ(score) - 2 σ(unsafe): within (-2, 1), however long the answers.
    rewards = [metrics["reward"] for _, _, metrics in steps] + [result.eval_report["mean_reward"]]
    assert all(-2 < reward < 1 for reward in rewards), rewards


@pytest.mark.slow
def test_two_processes_train_on_ratings_as_one_does_and_both_reaches_the_ranks(tiny, rated, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    two = {"launch": "ddp", "num_processes": 2, "per_device_batch_size": 4, "lora_dropout": 0.0, "max_steps": 3}
    config = settings(RewardConfig, tiny.reward, objective="ratings", label_weights="unsafe:-2", **two)

    launched = run_launched("reward", config, str(rated), str(tmp_path / "two"))

    single = settings(RewardConfig, tiny.reward, objective="ratings", label_weights="unsafe:-2", lora_dropout=0.0,
                      max_steps=3)  # fmt: skip
    alone = train_reward(single, str(rated), str(tmp_path / "one"))
    assert launched.eval_report.keys() == alone.eval_report.keys() and launched.eval_report["eval_ratings"] == 24
    assert (tmp_path / "two" / REWARD_HEAD_FILE).read_text() == (tmp_path / "one" / REWARD_HEAD_FILE).read_text()
    # Each process's 4 rated answers average to the one process's 8: the same gradients, the same weights.
    trained, expected = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("two", "one"))
    for name, tensor in trained.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-3, atol=1e-4, msg=name)

    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(16))
    both = settings(RewardConfig, tiny.reward, objective="both", **two)
    result = run_launched("reward", both, str(pairs), str(tmp_path / "both"), ratings=str(rated))
    assert result.steps == 3 and {"accuracy", "eval_pairs", "rating_spearman"} <= set(result.eval_report)


def test_the_memory_estimate_counts_one_sequence_per_rated_answer(tiny):
    arch = read_architecture(tiny.reward)
    pairs, ratings, both = (
        estimate_memory(RewardConfig(model_name_or_path="m", objective=objective), arch)
        for objective in ("pairs", "ratings", "both")
    )
    assert ratings.activations * 2 == pairs.activations and ratings.logits * 2 == pairs.logits
    assert both == pairs  # a batch of both may be all pairs


@pytest.mark.parametrize("name", FAMILIES)
def test_an_answer_is_read_as_scoring_renders_it_on_every_model_family(name):
    folder = TOKENIZERS / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the real tokenizers live in ../shared/data/tokenizers/ beside the checkout")
    tokenizer = load_tokenizer(folder)
    prompt = [{"role": "user", "content": "How many legs does a spider have?"}]
    completion = [{"role": "assistant", "content": "Eight."}]
    # generate.score (and so PPO's and the registry's rewards) renders the conversation, then tokenizes it.
    rendered = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    assert _tokenize(tokenizer, prompt, completion) == tokenizer(rendered, add_special_tokens=False)["input_ids"]
