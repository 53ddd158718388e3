"""A new policy's samples back into the annotation queue: tasks that measure the round, and data for the next.

After a policy round (reward→PPO, DPO, KTO, SFT) succeeds, and for a "sample" round on demand, `sample_into_queue`:

- eval prompts (split "eval"; the project's first `sample_prompts` of them, the same ones every round): one new
  sample each, and a pairwise task of it against the previous policy's response to that prompt (the base version's
  sample, else a response already there, else one sampled from the base model now), to measure the round (made
  whatever kinds the project enables; the queue serves them once it enables pairwise);
- train prompts (`sample_prompts` of them, drawn at random with the round's number as seed): `samples_per_prompt`
  samples each (K), and among them one pairwise task per prompt when the project enables pairwise (a ratings-only
  project, as for KTO, gets none it could not serve): a random pair, or with pair_selection
  "uncertainty" the pair the reward model separates least (smallest |r(a) − r(b)|), created most uncertain
  first, so the queue (which serves equal priorities oldest first) gives them in that order; a ranking task of
  all K when K >= 3 and the project enables ranking; a rating task of each sample when the project asks.

Samples that are the same text but for whitespace (annotate.models.text_key) are one answer: no task compares an
answer with itself. A train prompt's pair, ranking and ratings are over its distinct samples (a pair needs two, a
ranking three). An eval sample that is the same text as its opponent is recorded as a tie no one is asked for: a
complete pairwise task holding one annotation of source "auto", which the win rate counts as a tie and the Models
page marks.

With the round's sample config naming an inference server (server_url), the samples come from it
(training/engine/serve.py) rather than from `generate` in the worker; responses record its URL.

Responses record the model version and the sampling parameters; tasks carry the round's number. Eval tasks come
before train tasks in the queue (priority 10 above). All tasks of a round are written in one transaction.
"""

import logging
import random
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from django.db import transaction

from annotate.models import Annotation, Project, Prompt, Response, Task, TaskKind, TaskResponse, text_key, unique_texts
from models_registry.models import ModelVersion

logger = logging.getLogger(__name__)

EVAL_PRIORITY = 10  # measuring the round comes first: its answer decides whether to keep the new policy
Progress = Callable[[int, int], bool]


def sample_into_queue(
    project: Project,
    policy: ModelVersion,
    *,
    round_number: int,
    config: Any,
    previous: ModelVersion | None = None,
    base_model: str = "",
    reward_path: str = "",
    progress: Progress | None = None,
) -> dict[str, int]:
    """Sample `policy` for the project's eval and train prompts and queue tasks over the samples; counts made."""
    eval_prompts = list(project.prompts.filter(split=Prompt.Split.EVAL).order_by("id")[: project.sample_prompts])
    train_ids = list(project.prompts.filter(split=Prompt.Split.TRAIN).values_list("id", flat=True))
    train_ids = random.Random(round_number).sample(train_ids, min(project.sample_prompts, len(train_ids)))
    train_prompts = list(Prompt.objects.filter(id__in=train_ids).order_by("id"))
    # One sample per eval prompt, K per train prompt: each sequence is one row of the batched generation.
    asked = eval_prompts + [prompt for prompt in train_prompts for _ in range(project.samples_per_prompt)]
    if not asked:
        logger.info("No prompts to sample")
        return {"responses": 0, "tasks": 0}

    logger.info("Sampling %s sequences from %s", len(asked), policy)
    params = {name: getattr(config, name) for name in ("max_new_tokens", "temperature", "top_p", "seed")}
    if config.server_url:
        params["server"] = config.server_url
    texts = _generate(policy.path, [p.messages for p in asked], config, progress)
    opponents = _opponents(eval_prompts, previous, base_model, config, params)

    with transaction.atomic():
        made = [
            _response(prompt, text[0], policy, {**params, "round": round_number})
            for prompt, text in zip(asked, texts, strict=True)
        ]
        Response.objects.bulk_create(made)
        by_prompt: dict[int, list[Response]] = {}
        for response in made:
            by_prompt.setdefault(response.prompt_id, []).append(response)

        tasks: list[tuple[Prompt, str, list[Response], int]] = []
        ties: list[tuple[Prompt, list[Response]]] = []
        for prompt in eval_prompts:
            if opponent := opponents.get(prompt.pk):
                pair = [by_prompt[prompt.pk][0], opponent]
                if text_key(pair[0].content) == text_key(opponent.content):
                    ties.append((prompt, pair))
                else:
                    tasks.append((prompt, TaskKind.PAIRWISE, pair, EVAL_PRIORITY))
        distinct = {prompt.pk: unique_texts(by_prompt[prompt.pk], attrgetter("content")) for prompt in train_prompts}
        if TaskKind.PAIRWISE in project.task_kinds:
            for prompt, pair in _train_pairs(project, train_prompts, distinct, reward_path):
                tasks.append((prompt, TaskKind.PAIRWISE, pair, 0))
        for prompt in train_prompts:
            answers = distinct[prompt.pk]
            if len(answers) >= 3 and TaskKind.RANKING in project.task_kinds:
                tasks.append((prompt, TaskKind.RANKING, answers, 0))
            if project.sample_rating_tasks and TaskKind.RATING in project.task_kinds:
                tasks.extend((prompt, TaskKind.RATING, [answer], 0) for answer in answers)
        _create_tasks(project, tasks, ties, round_number)
    logger.info("Queued %s new responses and %s tasks; %s automatic ties", len(made), len(tasks), len(ties))
    return {"responses": len(made), "tasks": len(tasks), "automatic_ties": len(ties)}


def _opponents(
    eval_prompts: list[Prompt], previous: ModelVersion | None, base_model: str, config: Any, params: dict[str, Any]
) -> dict[int, Response]:
    """Per eval prompt, what the new sample is compared with: the previous policy's answer to it, or another."""
    opponents: dict[int, Response] = {}
    if previous is not None:
        for response in Response.objects.filter(prompt__in=eval_prompts, model_version=previous).order_by("-id"):
            opponents.setdefault(response.prompt_id, response)
    missing = [p for p in eval_prompts if p.pk not in opponents]
    if previous is None:
        # Round one: an answer that is already there (imported or written by people) stands for "before".
        for response in Response.objects.filter(prompt__in=missing, model_version=None).order_by("id"):
            opponents.setdefault(response.prompt_id, response)
        missing = [p for p in missing if p.pk not in opponents]
    if missing and (path := previous.path if previous else base_model):
        logger.info("Sampling %s eval prompts from %s to compare against", len(missing), previous or base_model)
        texts = _generate(path, [p.messages for p in missing], config)
        made = Response.objects.bulk_create(
            _response(p, t[0], previous, params) for p, t in zip(missing, texts, strict=True)
        )
        opponents.update({response.prompt_id: response for response in made})
    return opponents


def _generate(path: str, prompts: list[list[dict]], config: Any, progress: Progress | None = None) -> list[list[str]]:
    """One sample per prompt from the model at path: through the inference server the config names, else in-process."""
    settings = {name: getattr(config, name) for name in ("max_new_tokens", "temperature", "top_p", "seed")}
    if config.server_url:
        from training.engine import serve

        return serve.generate(serve.server_from_config(config), path, prompts, progress=progress, **settings)
    from training.engine.generate import generate

    return generate(path, prompts, batch_size=config.batch_size, progress=progress, **settings)


def _train_pairs(
    project: Project, prompts: list[Prompt], by_prompt: dict[int, list[Response]], reward_path: str
) -> list[tuple[Prompt, list[Response]]]:
    """(prompt, the two samples to compare) per train prompt with two samples or more, in queue order; by_prompt
    holds each prompt's distinct samples."""
    eligible = [p for p in prompts if len(by_prompt[p.pk]) >= 2]
    if project.pair_selection == "uncertainty" and reward_path and eligible:
        from training.engine.generate import score

        conversations = [
            [*p.messages, {"role": "assistant", "content": r.content}] for p in eligible for r in by_prompt[p.pk]
        ]
        rewards = iter(score(reward_path, conversations).tolist())
        chosen = []
        for prompt in eligible:
            scored = [(next(rewards), r) for r in by_prompt[prompt.pk]]
            # The closest two: sorted by reward, the smallest gap is between neighbours.
            scored.sort(key=lambda pair: pair[0])
            gap, i = min((scored[j + 1][0] - scored[j][0], j) for j in range(len(scored) - 1))
            chosen.append((gap, prompt, [scored[i][1], scored[i + 1][1]]))
        chosen.sort(key=lambda row: row[0])  # most uncertain first
        return [(p, pair) for _, p, pair in chosen]
    if project.pair_selection == "uncertainty" and eligible:
        logger.warning("No reward model to rank the samples by: pairs are drawn at random")
    rng = random.Random(project.pk)
    return [(p, rng.sample(by_prompt[p.pk], 2)) for p in eligible]


def _create_tasks(
    project: Project,
    tasks: list[tuple[Prompt, str, list[Response], int]],
    ties: list[tuple[Prompt, list[Response]]],
    round_number: int,
) -> None:
    """The tasks for annotators, and the eval pairs of equal texts as complete tasks holding an automatic tie."""
    queued = [
        Task(
            project=project,
            prompt=prompt,
            kind=kind,
            required_annotations=project.overlap,
            priority=priority,
            round_number=round_number,
        )
        for prompt, kind, _, priority in tasks
    ]
    tied = [
        Task(
            project=project,
            prompt=prompt,
            kind=TaskKind.PAIRWISE,
            required_annotations=1,
            annotation_count=1,
            status=Task.Status.COMPLETE,
            priority=EVAL_PRIORITY,
            round_number=round_number,
        )
        for prompt, _ in ties
    ]
    rows = Task.objects.bulk_create(queued + tied)
    responses = [responses for _, _, responses, _ in tasks] + [pair for _, pair in ties]
    TaskResponse.objects.bulk_create(
        TaskResponse(task=task, response=response, position=position)
        for task, task_responses in zip(rows, responses, strict=True)
        for position, response in enumerate(task_responses)
    )
    Annotation.objects.bulk_create(
        Annotation(task=task, source=Annotation.Source.AUTO, choice=Annotation.Choice.TIE) for task in tied
    )
    project.count_tasks(added=len(rows), completed=len(tied))  # bulk_create skips Task.save, which counts


def _response(prompt: Prompt, text: str, version: ModelVersion | None, params: dict[str, Any]) -> Response:
    """A sampled response, as a database can hold it: PostgreSQL refuses NUL characters, which byte-level models
    can emit."""
    return Response(
        prompt=prompt,
        content=text.replace("\x00", "\ufffd"),
        source=Response.Source.MODEL,
        model_version=version,
        generation_params=params,
    )
