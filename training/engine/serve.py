"""Sampling through an OpenAI-compatible inference server instead of in-process `generate`.

A round whose SampleConfig names `server_url` sends each sequence as one request to the server's completions
endpoint, `concurrency` at a time, with the prompt tokens `encode_prompt` gives (the same chat template, BOS and
default system prompt as training, scoring and evaluation) and the stop ids `stop_token_ids` gives. Two servers:

- vLLM (`vllm serve BASE --enable-lora`, production): the prompt travels as token ids and the stop ids as
  `stop_token_ids`; a PEFT adapter is loaded at runtime under its path as its name (`POST /v1/load_lora_adapter`,
  which needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True on the server; one started with `--lora-modules PATH=PATH` has
  it already), so the server must see the adapter at the same path as the worker.
- `transformers serve` (tests, small setups): the prompt travels as text, which the server tokenizes adding the
  special tokens (BOS) itself, and the stop ids in its `generation_config`; the model is named by its local path.
  It loads full models only: an adapter folder has no config.json for it to read.

Either way the server's count of prompt tokens must equal len(encode_prompt(...)), or sampling stops with an error:
a prompt the policy was not trained on is not a sample of it. Sampling with `generate` stays the default.
"""

import json
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import openai
from transformers import AutoConfig, GenerationConfig, PreTrainedTokenizerBase

from training.engine.generate import GenerationStopped, Messages, encode_prompt, stop_token_ids
from training.engine.model_files import adapter_base, is_adapter


class InferenceServerError(RuntimeError):
    """The inference server could not be reached, refused the model, or saw other prompt tokens than ours."""


@dataclass
class Server:
    url: str  # the OpenAI-compatible base URL, ending in /v1
    kind: str = "vllm"  # one of config.SERVER_KINDS: how prompts, stop ids and adapters travel
    api_key: str = "none"  # the servers started here check none; the client insists on one
    concurrency: int = 8  # requests in flight at once
    timeout: float = 600.0  # seconds one request may take
    max_retries: int = 3  # on connection errors, 408, 429 and 5xx, with backoff (the openai client's own)


def server_from_config(config: Any) -> Server:
    """The server a SampleConfig names; its API key is read from the environment variable the config names."""
    api_key = "none"
    if (name := config.server_api_key_env) and not (api_key := os.environ.get(name, "")):
        raise InferenceServerError(f"server_api_key_env: the environment variable {name} is not set")
    return Server(
        url=config.server_url,
        kind=config.server_kind,
        api_key=api_key,
        concurrency=config.server_concurrency,
        timeout=config.server_timeout,
    )


def generate(
    server: Server,
    model_path: str,
    prompts: list[Messages],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: Callable[[int, int], bool] | None = None,
) -> list[list[str]]:
    """num_samples responses per prompt, in prompt order, as `training.engine.generate.generate` gives them."""
    texts = [
        text
        for text, _ in sample(
            server,
            model_path,
            [prompt for prompt in prompts for _ in range(num_samples)],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            progress=progress,
        )
    ]
    return [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]


def sample(
    server: Server,
    model_path: str,
    conversations: list[Messages],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    progress: Callable[[int, int], bool] | None = None,
) -> list[tuple[str, int]]:
    """(text, tokens generated) for each conversation, in order; sequence i is sampled with seed + i, so that a
    prompt asked K times gets K different samples and the same call gives the same ones.

    progress(done, total) is called each time another `concurrency` sequences are back, and at the end; if it
    returns True, the requests not yet sent are dropped (those in flight are waited for) and GenerationStopped is
    raised.
    """
    from training.engine.common import load_tokenizer

    client = openai.OpenAI(
        base_url=server.url, api_key=server.api_key, timeout=server.timeout, max_retries=server.max_retries
    )
    if is_adapter(model_path):
        _load_adapter(client, server, model_path)
    tokenizer = load_tokenizer(model_path)
    base = adapter_base(model_path) if is_adapter(model_path) else model_path
    stops = stop_token_ids(_generation_config(base), tokenizer)
    prompts = [encode_prompt(messages, tokenizer) for messages in conversations]
    settings: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    if server.kind == "vllm":
        settings["extra_body"] = {"stop_token_ids": stops}
    else:
        # Its temperature alone leaves do_sample as the model's generation config has it: unset, greedy.
        generation_config = {"eos_token_id": stops, "do_sample": temperature > 0}
        settings["extra_body"] = {"generation_config": json.dumps(generation_config)}

    def request(i: int) -> tuple[str, int]:
        prompt = prompts[i] if server.kind == "vllm" else _as_text(prompts[i], tokenizer)
        try:
            answer = client.completions.create(model=model_path, prompt=prompt, seed=seed + i, **settings)
        except openai.APIConnectionError as error:
            raise InferenceServerError(f"inference server {server.url} is unreachable: {error}") from error
        except openai.APIStatusError as error:
            raise InferenceServerError(
                f"inference server {server.url} refused model {model_path} ({error.status_code}): {_detail(error)}"
            ) from error
        if answer.usage.prompt_tokens != len(prompts[i]):
            raise InferenceServerError(
                f"inference server {server.url} read {answer.usage.prompt_tokens} prompt tokens where encode_prompt "
                f"gives {len(prompts[i])}: its tokenizer or chat template differs from {model_path}'s"
            )
        return answer.choices[0].text, answer.usage.completion_tokens

    results: list[tuple[str, int] | None] = [None] * len(prompts)
    pending: dict[Future, int] = {}
    sent = done = 0
    with ThreadPoolExecutor(server.concurrency) as pool:
        while sent < len(prompts) or pending:
            # A window of `concurrency` requests: one goes out as soon as another comes back.
            while sent < len(prompts) and len(pending) < server.concurrency:
                pending[pool.submit(request, sent)] = sent
                sent += 1
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = future.result()  # the first failure ends sampling
            reported, done = done // server.concurrency, done + len(finished)
            due = done // server.concurrency > reported or done == len(prompts)
            if progress is not None and due and progress(done, len(prompts)):
                raise GenerationStopped(f"stopped after {done} of {len(prompts)} sequences")
    return results  # type: ignore[return-value]


def _as_text(ids: list[int], tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt as text that the server's tokenizer (adding its special tokens, as `transformers serve` does)
    turns back into exactly ids: the BOS it adds itself is left out."""
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
    body = ids[1:] if adds_bos and ids[:1] == [tokenizer.bos_token_id] else ids
    text = tokenizer.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if tokenizer(text)["input_ids"] != ids:
        raise InferenceServerError(
            "this prompt does not survive as text (decoded and encoded again it gives other tokens); "
            "sample it through vLLM, which takes token ids"
        )
    return text


def _generation_config(path: str) -> GenerationConfig:
    """The generation config `from_pretrained` would give the model, read without its weights."""
    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))


def _load_adapter(client: openai.OpenAI, server: Server, path: str) -> None:
    """Make the adapter at path servable under its path as its name (vLLM's runtime LoRA loading)."""
    if server.kind != "vllm":
        raise InferenceServerError(
            f"{path} is a PEFT adapter, which transformers serve cannot load (it reads config.json, which an adapter "
            "lacks): sample it in-process, through vLLM (vllm serve BASE --enable-lora), or merge it first"
        )
    try:
        client.post("/load_lora_adapter", body={"lora_name": path, "lora_path": path}, cast_to=str)
    except openai.APIConnectionError as error:
        raise InferenceServerError(f"inference server {server.url} is unreachable: {error}") from error
    except openai.APIStatusError as error:
        if "already been loaded" in _detail(error):  # a second round on the same adapter, or --lora-modules
            return
        hint = " (start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
        raise InferenceServerError(
            f"inference server {server.url} refused to load adapter {path} ({error.status_code}): "
            f"{_detail(error)}{hint if error.status_code == 404 else ''}"
        ) from error


def _detail(error: openai.APIStatusError) -> str:
    """What the server said, from vLLM's {"error": {"message"}} or FastAPI's {"detail"} body."""
    body = error.body if isinstance(error.body, dict) else {}
    message = body.get("detail") or body.get("message") or (body.get("error") or {}).get("message")
    return str(message or error.response.text)
