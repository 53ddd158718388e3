"""Sampling through a real `transformers serve` (started here from the installed package, no fake): the samples land
in the queue as in-process `generate` gives them, the server reads exactly encode_prompt's tokens, stops on our stop
ids, and a server that is down or refuses the model fails the round with an error naming it, queueing nothing."""

import shutil

import httpx2 as httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from annotate.models import Prompt, Response, Task
from models_registry.models import ModelVersion
from tests.training.conftest import free_port
from training.engine import serve
from training.engine.config import SampleConfig
from training.engine.generate import GenerationStopped, encode_prompt, generate
from training.sampling import sample_into_queue

pytestmark = pytest.mark.slow  # the server takes some 10 s to start on a shared CPU
QUESTIONS = ["What is a cat?", "Where is the sea?", "Who reads books?"]


@pytest.fixture(scope="module")
def talker(tiny, tmp_path_factory):
    """The tiny policy with its special tokens' embeddings zeroed: their logits are 0 where a text token's are not,
    so that greedy decoding writes text (the tiny policy's greedy answers are special tokens, which decode to "")."""
    path = tmp_path_factory.mktemp("talker") / "policy"
    shutil.copytree(tiny.policy, path)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.all_special_ids] = 0  # tied: the output rows too
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def stopper(talker, tmp_path_factory):
    """The talker, with its tokenizer's EOS moved to the token it answers QUESTIONS[0] with first (greedily): a stop
    id that its generation config (all `transformers serve` knows of by itself) does not name, as Phi-3's <|end|> is
    not named in its. Returns (path, that token)."""
    path = tmp_path_factory.mktemp("stopper") / "policy"
    shutil.copytree(talker, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = encode_prompt([{"role": "user", "content": QUESTIONS[0]}], tokenizer)
    with torch.no_grad():
        first = model(torch.tensor([ids])).logits[0, -1].argmax().item()
    assert first not in tokenizer.all_special_ids
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(first)
    tokenizer.save_pretrained(path)
    return str(path), first


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def test_greedy_samples_through_the_server_are_the_in_process_ones(server, talker):
    prompts = [messages(q) for q in QUESTIONS]
    through_server = serve.generate(
        serve.Server(url=server, kind="transformers"), talker, prompts, max_new_tokens=12, temperature=0
    )
    assert through_server == generate(talker, prompts, max_new_tokens=12, temperature=0, batch_size=1)
    assert all(len(text.strip()) > 5 for (text,) in through_server)


def test_the_server_reads_encode_prompts_tokens_without_a_second_bos(server, tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny.policy)
    ids = encode_prompt(messages(QUESTIONS[1]), tokenizer)
    assert ids[0] == tokenizer.bos_token_id and tokenizer("")["input_ids"] == [tokenizer.bos_token_id]
    text = serve._as_text(ids, tokenizer)
    assert not text.startswith(tokenizer.bos_token)  # the server's tokenizer adds it
    # sample() checks the server's prompt token count against len(ids) on every answer, and refuses a difference.
    (answer,) = serve.sample(
        serve.Server(url=server, kind="transformers"),
        str(tiny.policy),
        [messages(QUESTIONS[1])],
        max_new_tokens=4,
        temperature=1.0,
        top_p=1.0,
        seed=0,
    )
    assert answer[1] == 4
    usage = httpx.post(
        f"{server}/completions",
        json={"model": str(tiny.policy), "prompt": tokenizer.decode(ids), "max_tokens": 1},
        timeout=60,
    ).json()["usage"]
    assert usage["prompt_tokens"] == len(ids) + 1  # the text with its BOS would have been read with two


def test_the_server_stops_on_our_stop_ids(server, stopper):
    path, _ = stopper
    (answer,) = serve.sample(
        serve.Server(url=server, kind="transformers"),
        path,
        [messages(QUESTIONS[0])],
        max_new_tokens=12,
        temperature=0,
        top_p=1.0,
        seed=0,
    )
    assert answer[1] == 1  # the greedy first token is one of our stop ids: one token, and no more
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = serve._as_text(encode_prompt(messages(QUESTIONS[0]), tokenizer), tokenizer)
    request = {"model": path, "prompt": prompt, "max_tokens": 12, "temperature": 0}
    usage = httpx.post(f"{server}/completions", json=request, timeout=60).json()["usage"]
    assert usage["completion_tokens"] > 1  # left to its generation config, the server goes on


def test_a_stop_asked_by_progress_drops_the_requests_not_sent(server, tiny):
    calls = []
    with pytest.raises(GenerationStopped, match=r"stopped after [23] of 12"):
        serve.sample(
            serve.Server(url=server, kind="transformers", concurrency=2),
            str(tiny.policy),
            [messages(q) for q in QUESTIONS * 4],
            max_new_tokens=4,
            temperature=1.0,
            top_p=1.0,
            seed=0,
            progress=lambda done, total: calls.append((done, total)) or True,
        )
    assert len(calls) == 1 and calls[0][0] in (2, 3)  # one window back (and the next may have been too), not 12


def test_an_adapter_is_refused_before_any_request_with_what_transformers_serve_lacks(server, tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "x"}')
    with pytest.raises(serve.InferenceServerError, match="transformers serve cannot load"):
        serve.sample(
            serve.Server(url=server, kind="transformers"),
            str(tmp_path),
            [messages("Hi")],
            max_new_tokens=4,
            temperature=1.0,
            top_p=1.0,
            seed=0,
        )


@pytest.fixture
def queue(project, talker):
    """The project with eval and train prompts, and the talker registered as its base."""
    project.samples_per_prompt, project.sample_prompts = 2, 3
    project.save()
    for number, question in enumerate(QUESTIONS):
        Prompt.objects.create(project=project, external_id=f"e{number}", messages=messages(question), split="eval")
        Prompt.objects.create(project=project, external_id=f"t{number}", messages=messages(question), split="train")
    return project, ModelVersion.register(project=project, kind="policy", base_model=talker)


def server_config(server: str, **settings) -> SampleConfig:
    return SampleConfig(server_url=server, server_kind="transformers", max_new_tokens=12, **settings)


@pytest.mark.django_db
def test_sample_into_queue_through_the_server_queues_tasks_over_its_samples(server, queue):
    project, policy = queue
    counts = sample_into_queue(project, policy, round_number=1, config=server_config(server))
    served = Response.objects.filter(model_version=policy)
    assert counts["responses"] == served.count() == 3 + 3 * 2
    assert counts["tasks"] == Task.objects.filter(round_number=1).count() > 0
    assert {r.generation_params["server"] for r in served} == {server}


@pytest.mark.django_db
def test_greedy_samples_in_the_queue_are_those_generate_gives(server, queue):
    project, policy = queue
    sample_into_queue(project, policy, round_number=1, config=server_config(server, temperature=0))
    served = [r.content for r in Response.objects.filter(model_version=policy).order_by("id")]
    Response.objects.all().delete()
    sample_into_queue(
        project, policy, round_number=1, config=SampleConfig(max_new_tokens=12, temperature=0, batch_size=1)
    )
    in_process = list(Response.objects.filter(model_version=policy).order_by("id"))
    assert served == [r.content for r in in_process] and all(len(text.strip()) > 5 for text in served)
    assert "server" not in in_process[0].generation_params


@pytest.mark.django_db
def test_a_server_that_is_down_fails_the_round_naming_its_url_and_queues_nothing(queue):
    project, policy = queue
    url = f"http://127.0.0.1:{free_port()}/v1"
    config = SampleConfig(server_url=url, server_kind="transformers", max_new_tokens=4)
    with pytest.raises(serve.InferenceServerError, match=f"inference server {url} is unreachable"):
        sample_into_queue(project, policy, round_number=1, config=config)
    assert not Response.objects.exists() and not Task.objects.exists()


@pytest.mark.django_db
def test_a_model_the_server_cannot_load_is_named_in_the_error(server, queue, tiny, tmp_path):
    project, _ = queue
    missing = tmp_path / "policy"
    shutil.copytree(tiny.policy, missing)
    (missing / "config.json").write_text("{}")  # no model_type: the server cannot tell what model it is
    policy = ModelVersion.register(project=project, kind="policy", base_model=str(missing))
    with pytest.raises(serve.InferenceServerError, match=f"inference server {server} refused model {missing}"):
        sample_into_queue(project, policy, round_number=1, config=server_config(server))
    assert not Task.objects.exists()


def test_the_api_key_comes_from_the_variable_the_config_names(monkeypatch):
    config = SampleConfig(server_url="http://127.0.0.1:1/v1", server_api_key_env="ARBITER_TEST_SERVER_KEY")
    monkeypatch.delenv("ARBITER_TEST_SERVER_KEY", raising=False)
    with pytest.raises(serve.InferenceServerError, match="ARBITER_TEST_SERVER_KEY is not set"):
        serve.server_from_config(config)
    monkeypatch.setenv("ARBITER_TEST_SERVER_KEY", "secret")
    assert serve.server_from_config(config).api_key == "secret"
    assert "secret" not in str(config.to_dict())


@pytest.mark.parametrize(
    ("setting", "value"), [("server_kind", "ollama"), ("server_url", "localhost:8000"), ("server_concurrency", 0)]
)
def test_bad_server_settings_are_refused_naming_the_field(setting, value):
    with pytest.raises(ValueError, match=setting):
        SampleConfig(**{setting: value})
