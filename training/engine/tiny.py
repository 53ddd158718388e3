"""Tiny models for tests and demos, built from local text in about a second on a CPU; nothing is downloaded.

`build_tiny_models(out_dir)` trains a byte-level BPE tokenizer on a small bundled corpus (plus any text the
caller passes), gives it a chat template, and builds two randomly initialised Llama-style models on it:

    <out_dir>/policy/   LlamaForCausalLM and the tokenizer: AutoModelForCausalLM / AutoTokenizer.from_pretrained
    <out_dir>/reward/   LlamaForSequenceClassification (num_labels=1) and the same tokenizer:
                        AutoModelForSequenceClassification / AutoTokenizer.from_pretrained

The reward model starts from the policy's backbone with a fresh scalar head, as reward models usually start
from the SFT policy. The models know nothing; they exist so that trainers, exports and the registry run on
a real checkpoint. The same corpus, seed and config give the same files.

The chat template renders `<s><|user|>Hi</s><|assistant|>Hello</s>`: every turn ends with `</s>`, the
assistant's content and its `</s>` sit inside `{% generation %}` (so `return_assistant_tokens_mask` and TRL's
assistant-only loss see exactly them), and `add_generation_prompt` appends `<|assistant|>`. The role tags are
special tokens, so a prompt rendered alone is always a token prefix of the prompt followed by its answer.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TAGS = ["<|system|>", "<|user|>", "<|assistant|>"]

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)

# Enough everyday English, questions and answers for the BPE merges to look like words.
CORPUS = """\
What is the capital of France? The capital of France is Paris.
How many legs does a spider have? A spider has eight legs.
Can you help me write a short poem about the sea? Of course. The sea is wide and grey and slow.
Please summarise this paragraph in one sentence. Here is a summary in one sentence.
I am not sure I understand the question. Could you say more about what you need?
Thank you for your help! You are welcome. Let me know if there is anything else.
Explain why the sky is blue. Sunlight is scattered by the air, and blue light is scattered the most.
Write a function that adds two numbers. def add(a, b): return a + b
What is two plus two? Two plus two is four.
Tell me a joke. Why did the scarecrow win an award? Because he was outstanding in his field.
How do I boil an egg? Put the egg in boiling water for seven to nine minutes, then cool it in cold water.
Translate hello into Spanish. Hello in Spanish is hola.
Which is larger, a mouse or an elephant? An elephant is much larger than a mouse.
Give me three tips for sleeping well. Keep a regular schedule, avoid screens late, and keep the room cool.
The answer is helpful, honest and harmless. The answer is rude, wrong and unsafe.
I cannot help with that request, but I can suggest something else.
The first response is better because it answers the question directly.
The second response is better because it is clear, correct and kind.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 24 100 2024.
"""


@dataclass
class TinyConfig:
    vocab_size: int = 512  # BPE target; a small corpus may stop short, and the models use the tokenizer's real size
    min_frequency: int = 2  # a pair seen once would only memorise the corpus
    hidden_size: int = 64  # small enough that a training step takes milliseconds on a CPU
    intermediate_size: int = 128  # the MLP width; real Llamas use about 2.7 × hidden
    num_hidden_layers: int = 2  # two, so that anything per layer (LoRA targets, hooks) has more than one to find
    num_attention_heads: int = 4  # head_dim 16: several heads, as the attention code expects
    num_key_value_heads: int = 2  # grouped-query attention, as current Llamas use
    max_position_embeddings: int = 512  # longer than any test sequence; also the tokenizer's model_max_length
    tie_word_embeddings: bool = True  # the vocab-sized output matrix would otherwise be most of the parameters


@dataclass
class TinyModelPaths:
    root: Path
    policy: Path  # causal LM + tokenizer
    reward: Path  # sequence classifier (one logit) + tokenizer
    like: Path | None = None  # the model folder whose tokenizer and architecture they copy, if any


def build_tiny_models(
    out_dir: Path, *, corpus: list[str] | None = None, seed: int = 0, config: TinyConfig | None = None
) -> TinyModelPaths:
    """Train the tokenizer, build the policy and reward models, and save both under `out_dir`."""
    config = config or TinyConfig()
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(CORPUS.splitlines() + list(corpus or []), config)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    reward_config = copy.deepcopy(model_config)
    reward_config.num_labels = 1  # one scalar reward per sequence
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(model_config)
    reward = LlamaForSequenceClassification(reward_config)
    reward.model.load_state_dict(policy.model.state_dict())

    paths = TinyModelPaths(root=out_dir, policy=out_dir / "policy", reward=out_dir / "reward")
    for model, path in ((policy, paths.policy), (reward, paths.reward)):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return paths


def build_tokenizer(texts: list[str], config: TinyConfig) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes, nothing is unknown) with bos/eos/pad and the chat template."""
    special = [BOS, EOS, PAD, *ROLE_TAGS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=ROLE_TAGS,
        add_bos_token=True,  # plain text starts with <s> as the chat template does
        model_max_length=config.max_position_embeddings,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_models_like(
    out_dir: Path,
    folder: Path,
    *,
    seed: int = 0,
    config: TinyConfig | None = None,
    model_type: str | None = None,
) -> TinyModelPaths:
    """Tiny random-weight models with `folder`'s real tokenizer, chat template, special tokens and generation
    config, and the architecture of its config.json shrunk to `config`'s sizes. A folder without config.json is
    built as `model_type` (a transformers model type such as "phi3", whose config defaults describe the real
    model), or as a Llama on the tokenizer's ids when that is None.

    Everything that the stages read from a checkpoint besides the weights (how prompts are rendered, which ids
    start, pad and stop) is the real family's; only the weights are random and small.
    """
    config = config or TinyConfig()
    folder, out_dir = Path(folder), Path(out_dir)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ValueError(f"{folder}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json) to build from")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sizes = {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "max_position_embeddings": config.max_position_embeddings,
    }
    has_config = (folder / "config.json").is_file()
    if has_config or model_type:
        real = AutoConfig.from_pretrained(folder) if has_config else AutoConfig.for_model(model_type)
        # Per-layer lists (layer_types, …) describe the real depth: rebuilt from the shrunk one.
        fields = {k: v for k, v in real.to_dict().items() if k not in ("layer_types", "max_window_layers")}
        model_config = type(real)(**{**fields, **sizes, "vocab_size": max(real.vocab_size, len(tokenizer))})
    else:
        model_config = LlamaConfig(
            **sizes,
            vocab_size=len(tokenizer),
            tie_word_embeddings=config.tie_word_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    model_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    reward_config = copy.deepcopy(model_config)
    reward_config.num_labels = 1
    torch.manual_seed(seed)
    policy = AutoModelForCausalLM.from_config(model_config)
    reward = AutoModelForSequenceClassification.from_config(reward_config)
    reward.base_model.load_state_dict(policy.base_model.state_dict())
    if (folder / "generation_config.json").is_file():
        policy.generation_config = GenerationConfig.from_pretrained(folder)

    paths = TinyModelPaths(root=out_dir, policy=out_dir / "policy", reward=out_dir / "reward", like=folder)
    for model, path in ((policy, paths.policy), (reward, paths.reward)):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return paths


def teach_answer(
    path: Path, conversations: list[list[dict[str, str]]], answer: str, *, steps: int = 200, seed: int = 0
) -> None:
    """Train the causal LM saved at `path`, in place, to answer every one of `conversations` with `answer` and stop:
    a tiny model that replies in a given format (an LLM judge's verdict, say), for the tests and benchmarks of what
    reads its replies. Full fine-tuning on the answer's tokens, one conversation a step; 200 steps take some 3 s."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    target = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    prompts = [
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        for messages in conversations
    ]
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        prompt = prompts[step % len(prompts)]
        ids = torch.tensor([prompt + target])  # (1, T)
        labels = torch.tensor([[-100] * len(prompt) + target])  # the loss on the answer and its EOS only
        model(ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
