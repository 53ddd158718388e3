"""A demo policy that writes varied sentences: the tiny model, fine-tuned on a small synthetic chat corpus.

A randomly initialised tiny model emits token soup; after a short SFT on `demo_conversations` it answers a
question about a topic with a sentence or two about it, differently each time it is sampled, and sometimes
politely ("please", "thanks"): enough variety for annotators (people or simulated) to prefer one answer to another
and for a round to move the policy. `build_demo_policy` takes about a minute on a laptop CPU and is deterministic.
"""

import json
import random
from pathlib import Path

from training.engine.common import ProgressFn
from training.engine.config import SFTConfig
from training.engine.sft import train_sft
from training.engine.tiny import build_tiny_models

TOPICS = [
    "the sea", "the moon", "a garden", "the city", "music", "a river", "the forest", "bread", "winter", "a train",
    "the sun", "a library", "coffee", "the mountains", "a cat", "rain", "a bridge", "the market", "tea", "a map",
]  # fmt: skip
QUESTIONS = [
    "Tell me about {topic}.", "What do you think of {topic}?", "Describe {topic} in a sentence.",
    "Write a line about {topic}.", "Say something kind about {topic}.",
]  # fmt: skip
ADJECTIVES = [
    "quiet", "bright", "old", "calm", "warm", "cold", "busy", "green", "grey", "gentle", "wide", "small", "slow",
]  # fmt: skip
CLOSINGS = ["I hope that helps.", "Ask me more if you like.", "That is all I know.", "It is worth a visit."]
POLITE = ["Thanks for asking.", "Thanks, that is a good question.", "Please ask again any time."]


def demo_conversations(count: int, *, seed: int = 0, polite_share: float = 0.3) -> list[dict]:
    """`count` chats of a question about a topic and a varied one- or two-sentence answer."""
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        topic = rng.choice(TOPICS)
        first, second = rng.sample(ADJECTIVES, 2)
        answer = f"{topic[0].upper()}{topic[1:]} is {first} and {second}."
        if rng.random() < 0.5:
            answer += " " + rng.choice(CLOSINGS)
        if rng.random() < polite_share:
            answer = rng.choice(POLITE) + " " + answer
        question = rng.choice(QUESTIONS).format(topic=topic)
        chats.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return chats


def demo_prompts(count: int, *, seed: int = 1) -> list[list[dict[str, str]]]:
    """Questions in the corpus's style (message lists), for demo tasks and tests."""
    return [chat["messages"][:1] for chat in demo_conversations(count, seed=seed)]


def build_demo_policy(out_dir: Path, *, steps: int = 300, seed: int = 0, progress: ProgressFn | None = None) -> Path:
    """The tiny policy, fully fine-tuned on the demo corpus (progress: its steps, as for a stage); returns the
    directory to from_pretrained."""
    out_dir = Path(out_dir)
    chats = demo_conversations(2000, seed=seed)
    tiny = build_tiny_models(out_dir / "tiny", corpus=[m["content"] for c in chats for m in c["messages"]], seed=seed)
    data = out_dir / "demo-sft.jsonl"
    data.write_text("".join(json.dumps(chat) + "\n" for chat in chats), encoding="utf-8")
    config = SFTConfig(
        model_name_or_path=str(tiny.policy),
        use_lora=False,  # a tiny model learns the corpus faster whole, and the result stands alone
        learning_rate=3e-3,
        max_steps=steps,
        per_device_batch_size=32,
        max_length=64,
        eval_fraction=0.0,
        seed=seed,
        logging_steps=50,
        save_steps=steps,
    )
    result = train_sft(config, str(data), str(out_dir / "policy"), progress)
    return Path(result.output_dir)
