"""Tiny local models, built once per session, small exports in the shapes annotate.exports writes, and a real
`transformers serve` for the tests that go through an inference server."""

import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest
import torch

from training.engine import common
from training.engine.tiny import CORPUS, build_tiny_models, build_tiny_models_like

MARKER = "helpful"  # chosen answers contain it, rejected ones never: a rule a reward model can learn
SENTENCES = [line for line in CORPUS.splitlines() if line and MARKER not in line]
QUESTIONS = [line.split("?")[0] + "?" for line in SENTENCES if "?" in line]
# Real tokenizers (and configs) of chat model families, shared beside the repository: see its README.
TOKENIZERS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tokenizers"
FAMILIES = ["qwen2.5-instruct", "smollm2-instruct", "tinyllama-chat", "phi3-mini-instruct"]
# The architecture of the families whose folder has no config.json (transformers' defaults describe the real model).
MODEL_TYPES = {"phi3-mini-instruct": "phi3"}


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Tiny models gain nothing from a second thread, and on a shared CPU its spin-waits make steps ~5x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session", params=FAMILIES)
def family(request, tmp_path_factory):
    """Tiny random models with a real family's tokenizer, chat template and (shrunk) architecture."""
    folder = TOKENIZERS / request.param
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the real tokenizers live in ../shared/data/tokenizers/ beside the checkout")
    return build_tiny_models_like(
        tmp_path_factory.mktemp(request.param), folder, model_type=MODEL_TYPES.get(request.param)
    )


@pytest.fixture
def policy(tiny, settings):
    """The tiny policy as a round's base: its folder is an allowed model root."""
    settings.ARBITER_MODEL_ROOTS = [tiny.root]
    return str(tiny.policy)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def marker_pairs(n: int, *, seed: int = 0, style: str = "conversational") -> list[dict]:
    """n pairs of a pairs export, one prompt each: the chosen answer has MARKER somewhere, the rejected one not."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        chosen, rejected = rng.sample(SENTENCES, 2)
        words = chosen.split()
        words.insert(rng.randrange(len(words) + 1), MARKER)
        prompt, chosen = rng.choice(QUESTIONS), " ".join(words)
        if style == "conversational":
            prompt = [{"role": "user", "content": prompt}]
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                # What an export adds beside TRL's columns; the engine keeps margin (if asked) and prompt_id only.
                "margin": 1.0,
                "votes": 1,
                "votes_chosen": None,
                "votes_rejected": None,
                "votes_tie": None,
                "agreement": None,
                "tie": False,
                "both_bad": False,
                "prompt_id": f"p{i}",
                "task_id": None,
                "chosen_id": 2 * i,
                "rejected_id": 2 * i + 1,
                "chosen_model_version": None,
                "rejected_model_version": None,
            }
        )
    return rows


def marker_unpaired(n: int, *, seed: int = 0) -> list[dict]:
    """An unpaired export's rows: each marker pair's answers rated apart, the one with the marker desirable."""
    return [
        {"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen", "score": score,
         "prompt_id": pair["prompt_id"], "response_id": pair[f"{side}_id"], "model_version": None}
        for pair in marker_pairs(n, seed=seed)
        for side, score in (("chosen", 5.0), ("rejected", 1.0))
    ]  # fmt: skip


def sft_rows(n: int, *, seed: int = 0) -> list[dict]:
    """An sft export (conversational): a question, sometimes a system message, and one preferred answer."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": "Answer in one sentence."}] if i % 2 else []
        messages += [
            {"role": "user", "content": rng.choice(QUESTIONS)},
            {"role": "assistant", "content": f"The answer is {MARKER}."},
        ]
        rows.append({"messages": messages, "prompt_id": f"p{i}", "response_id": i, "source": "imported"})
    return rows


def settings(config_class, model_path, **overrides):
    """A stage config small enough for a CPU test: short sequences, a batch of 8, metrics every step."""
    defaults = dict(
        model_name_or_path=str(model_path),
        max_steps=10,
        learning_rate=1e-3,
        per_device_batch_size=8,
        max_length=128,
        lora_r=8,
        lora_alpha=16,
        logging_steps=1,
        save_steps=1000,
        eval_fraction=0.25,
    )
    return config_class(**{**defaults, **overrides})


@pytest.fixture
def spy(monkeypatch):
    """spy(stage_module) → a dict that receives the stage's trainer, and its parameters before training."""

    def watch(module):
        seen = {}
        # DPO, KTO and SFT run it through common.train_policy_with: the spy then sits in common
        module = module if hasattr(module, "run_training") else common
        run_training = module.run_training

        def watched(trainer, *args, **kwargs):
            seen["trainer"] = trainer
            seen["before"] = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
            if "before_training" in seen:
                seen["before_training"](trainer)
            return run_training(trainer, *args, **kwargs)

        monkeypatch.setattr(module, "run_training", watched)
        return seen

    return watch


def save_adapter(base_path, path, *, zero: bool = False):
    """A LoRA adapter on the model at base_path, saved with its tokenizer; zero: the identity (B = 0), as trained
    adapters start; else random, so that it changes the logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=zero)
    get_peft_model(model, config).save_pretrained(path)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`transformers serve` on a free port, as a subprocess; the URL once it answers, the process killed after."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [str(Path(sys.executable).parent / "transformers"), "serve", "--port", str(port), "--device", "cpu"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/models").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
