"""What a local model folder must hold for the stages to load it, read from its files alone (no torch, no weights).

A full model: config.json, weights (one file or a sharded index) and a fast tokenizer. A PEFT adapter:
adapter_config.json and adapter weights, a tokenizer of its own or its base's, and a base that is a model too.
The launch checks a lead's folder with `missing_files` before queueing, so that a round does not fail in the
worker on what the folder lacks.
"""

import json
from pathlib import Path
from typing import Any

WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# A byte-level BPE's slow files convert to a fast tokenizer without sentencepiece or tiktoken (which the workers
# lack); a tokenizer.model (sentencepiece) alone does not.
FAST_TOKENIZER = (("tokenizer.json",), ("vocab.json", "merges.txt"))
NO_FAST_TOKENIZER = "fast tokenizer (tokenizer.json, or vocab.json and merges.txt)"


def is_adapter(path: str | Path) -> bool:
    """A PEFT adapter directory (as our stages save with LoRA) rather than a full model or a hub id."""
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on."""
    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


# Beside a reward model trained on ratings (reward.py): its outputs ([score, *labels]) and the weight of each in the
# reward. A model without it (trained on pairs) has one output, which is the reward. Here, not in common.py, so that
# the web process can tell a rating reward model (training/judging.py `rates`) without importing torch.
REWARD_HEAD_FILE = "reward_head.json"


def save_reward_head(output_dir: str | Path, outputs: list[str], weights: list[float], objective: str) -> None:
    head = {"objective": objective, "outputs": outputs, "weights": weights}
    (Path(output_dir) / REWARD_HEAD_FILE).write_text(json.dumps(head, indent=2) + "\n", encoding="utf-8")


def read_reward_head(path: str | Path) -> dict[str, Any] | None:
    """The head layout saved beside a rating reward model; None for a one-output (pairwise) model."""
    file = Path(path) / REWARD_HEAD_FILE
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def missing_files(path: str | Path) -> list[str]:
    """What the folder lacks to load as a model or an adapter (nouns, naming no path); empty if nothing."""
    path = Path(path)
    if is_adapter(path):
        return _missing_from_adapter(path)
    missing = []
    if not _json_object(path / "config.json"):
        missing.append("config.json")
    if not any((path / name).is_file() for name in WEIGHTS):
        missing.append("weights (model.safetensors, pytorch_model.bin or a sharded index of either)")
    if not _has_fast_tokenizer(path):
        missing.append(NO_FAST_TOKENIZER)
    return missing


def models_inside(path: str | Path) -> list[str]:
    """The names of the folder's subfolders that are models (make_tiny_model writes policy/ and reward/)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(child.name for child in path.iterdir() if child.is_dir() and not missing_files(child))


def _missing_from_adapter(path: Path) -> list[str]:
    missing = []
    if not any((path / name).is_file() for name in ADAPTER_WEIGHTS):
        missing.append("adapter weights (adapter_model.safetensors or adapter_model.bin)")
    config = _json_object(path / "adapter_config.json")
    base = config.get("base_model_name_or_path") if config else None
    if not isinstance(base, str) or not base:
        return [*missing, "base model (base_model_name_or_path in adapter_config.json)"]
    own_tokenizer = (path / "tokenizer_config.json").is_file()  # else the tokenizer loads from the base
    if own_tokenizer and not _has_fast_tokenizer(path):
        missing.append(NO_FAST_TOKENIZER)
    if not Path(base).is_absolute():
        return missing  # a hub id: nothing to read offline
    if not Path(base).is_dir():
        return [*missing, "base model folder (adapter_config.json's base_model_name_or_path names none)"]
    base_missing = [m for m in missing_files(base) if not (own_tokenizer and m == NO_FAST_TOKENIZER)]
    if base_missing:
        missing.append(f"base model that loads (its base has no {'; no '.join(base_missing)})")
    return missing


def _has_fast_tokenizer(path: Path) -> bool:
    return any(all((path / name).is_file() for name in names) for names in FAST_TOKENIZER)


def _json_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
