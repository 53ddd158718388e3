"""The tiny models that the training tests run on: built locally, loaded the usual way, chat template included."""

import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from a model hub; fail at once if something tries

import torch  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import CommandError  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
)

from tests.training.conftest import TOKENIZERS  # noqa: E402
from training.engine.tiny import TinyConfig, build_tiny_models  # noqa: E402

ENGINE = Path(__file__).resolve().parents[2] / "training" / "engine"
CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": " Six."},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"), corpus=["Zyzzyva zyzzyva zyzzyva."])


def test_loads_through_from_pretrained(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny.policy)
    policy = AutoModelForCausalLM.from_pretrained(tiny.policy)
    reward = AutoModelForSequenceClassification.from_pretrained(tiny.reward)

    assert type(policy).__name__ == "LlamaForCausalLM"
    assert type(reward).__name__ == "LlamaForSequenceClassification"
    assert policy.config.vocab_size == reward.config.vocab_size == len(tokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert reward.config.num_labels == 1
    assert reward.config.pad_token_id == tokenizer.pad_token_id
    # The reward model starts from the policy's backbone.
    torch.testing.assert_close(reward.model.embed_tokens.weight, policy.model.embed_tokens.weight)
    # The caller's text reached the tokenizer: a word it repeats became one token (from the bundled text alone: 7).
    assert tokenizer.tokenize(" zyzzyva") == ["Ġzyzzyva"]


def test_chat_template_marks_the_assistant_tokens_only(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny.policy)

    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<s><|system|>Answer in one word.</s><|user|>What is two plus two?</s><|assistant|>Four.</s>"
        "<|user|>And three plus three?</s><|assistant|> Six.</s>"
    )
    out = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(mask) == len(ids) and set(mask) == {0, 1}
    # Exactly the two answers and the </s> that ends each: not the role tags, not the other turns.
    assert tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "Four.</s> Six.</s>"
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert [m for i, m in zip(ids, mask, strict=True) if i == assistant] == [0, 0]


def test_generation_prompt_is_a_token_prefix_of_the_answered_conversation(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny.policy)
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True)["input_ids"]
    full = tokenizer.apply_chat_template(CONVERSATION[:3])["input_ids"]

    assert tokenizer.decode(prompt).endswith("<|assistant|>")
    assert full[: len(prompt)] == prompt
    # Plain text gets the same <s> the template starts with.
    assert tokenizer("Hello")["input_ids"][0] == tokenizer.bos_token_id


def test_both_models_run_a_forward_pass(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny.policy)
    policy = AutoModelForCausalLM.from_pretrained(tiny.policy)
    reward = AutoModelForSequenceClassification.from_pretrained(tiny.reward)
    batch = tokenizer(["Hello there.", "A longer sentence than the first one."], padding=True, return_tensors="pt")

    with torch.no_grad():
        logits = policy(**batch).logits  # (B, T, V)
        rewards = reward(**batch).logits  # (B, 1)

    assert logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    assert rewards.shape == (2, 1)
    assert torch.isfinite(logits).all() and torch.isfinite(rewards).all()
    # The padded row's reward is read at its last real token, not at the padding.
    short = tokenizer(["Hello there."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reward(**short).logits[0], rewards[0])


def test_same_seed_same_files_other_seed_other_weights(tmp_path):
    config = TinyConfig(hidden_size=32, num_hidden_layers=1)
    first, again, other = (
        build_tiny_models(tmp_path / name, seed=seed, config=config) for name, seed in (("a", 0), ("b", 0), ("c", 1))
    )

    for name in ("tokenizer.json", "config.json", "model.safetensors"):
        assert (first.policy / name).read_bytes() == (again.policy / name).read_bytes()
        assert (first.reward / name).read_bytes() == (again.reward / name).read_bytes()
    assert (first.policy / "model.safetensors").read_bytes() != (other.policy / "model.safetensors").read_bytes()
    assert AutoModelForCausalLM.from_pretrained(first.policy).config.hidden_size == 32


def test_make_tiny_model_command(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Quokka quokka quokka.\nQuokkas smile.\n", encoding="utf-8")

    call_command("make_tiny_model", str(tmp_path / "models"), "--corpus", str(corpus), "--seed", "2")

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "models" / "policy")
    assert tokenizer.tokenize(" quokka") == ["Ġquokka"]
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "models" / "reward").config.num_labels == 1


def test_like_a_family_keeps_its_tokenizer_template_stop_ids_and_architecture(family):
    folder = family.like
    real = AutoTokenizer.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(family.policy)
    policy = AutoModelForCausalLM.from_pretrained(family.policy)
    reward = AutoModelForSequenceClassification.from_pretrained(family.reward)

    assert tokenizer.chat_template == real.chat_template
    assert tokenizer.get_vocab() == real.get_vocab()
    assert tokenizer.all_special_tokens == real.all_special_tokens
    config = folder / "config.json"
    expected = json.loads(config.read_text())["architectures"][0] if config.is_file() else "Phi3ForCausalLM"
    assert type(policy).__name__ == expected
    assert type(reward).__name__ == expected.replace("ForCausalLM", "ForSequenceClassification")
    assert (policy.config.num_hidden_layers, policy.config.hidden_size) == (2, 64)
    if not config.is_file():  # Phi-3-mini's padded vocabulary and its ids, as its tokenizer has them
        assert (policy.config.vocab_size, policy.config.eos_token_id, policy.config.pad_token_id) == (
            32064,
            32000,
            32000,
        )
    assert policy.config.vocab_size >= len(tokenizer) and reward.config.num_labels == 1
    assert reward.config.pad_token_id == policy.config.pad_token_id is not None
    if (folder / "generation_config.json").is_file():
        assert policy.generation_config.eos_token_id == GenerationConfig.from_pretrained(folder).eos_token_id
    torch.testing.assert_close(reward.base_model.embed_tokens.weight, policy.base_model.embed_tokens.weight)


def test_make_tiny_model_like_a_folder(tmp_path):
    folder = TOKENIZERS / "phi3-mini-instruct"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")

    call_command("make_tiny_model", str(tmp_path / "llama"), "--like", str(folder), stdout=(out := io.StringIO()))
    assert "has no config.json: the models are a tiny Llama" in out.getvalue()

    call_command("make_tiny_model", str(tmp_path / "phi"), "--like", str(folder), "--model-type", "phi3")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "phi" / "policy").config.model_type == "phi3"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "phi" / "policy")
    assert tokenizer.convert_tokens_to_ids("<|end|>") == 32007
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "phi" / "reward").config.num_labels == 1


def test_make_tiny_model_like_a_folder_without_a_tokenizer_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")

    with pytest.raises(CommandError, match=r"empty: no tokenizer \(tokenizer.json, tokenizer.model or vocab.json\)"):
        call_command("make_tiny_model", str(tmp_path / "out"), "--like", str(tmp_path / "empty"))
    assert not (tmp_path / "out").exists()


def test_engine_never_imports_django():
    modules = sorted(ENGINE.rglob("*.py"))
    assert modules, "no modules under training/engine"
    # Statically, so that an import inside a function counts too...
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "django" for name in names), f"{path} imports {names}"
    # ...and for real, in a fresh interpreter: importing every module (and so its packages) loads no django.
    root = ENGINE.parents[1]
    names = [".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__") for path in modules]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'django'))"
    )
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
