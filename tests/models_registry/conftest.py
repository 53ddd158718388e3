"""Votes between model versions, built with the ORM: one prompt and one task per vote, as fast as bulk inserts go."""

import itertools

import pytest

from annotate.models import Annotation, Prompt, Response, Task, TaskResponse
from models_registry.models import ModelVersion

_prompts = itertools.count()


def responses_for(prompt, versions):
    """One response per entry: a model's (source "model") or, for None, an imported one."""
    return Response.objects.bulk_create(
        Response(
            prompt=prompt,
            content=f"answer {i}",
            source="imported" if version is None else "model",
            model_version=version,
        )
        for i, version in enumerate(versions)
    )


def new_prompt(project):
    return Prompt.objects.create(project=project, external_id=f"p{next(_prompts)}", messages=[], split="eval")


@pytest.fixture
def policy(project):
    def register(**fields):
        return ModelVersion.register(project=project, kind="policy", base_model="tiny", **fields)

    return register


@pytest.fixture
def add_votes(project, annotator):
    """add_votes([(version at A, version at B, "a" | "b" | "tie"), …]): a pairwise task and one human vote each."""

    def add(votes, *, source="human"):
        prompts = Prompt.objects.bulk_create(
            Prompt(project=project, external_id=f"p{next(_prompts)}", messages=[]) for _ in votes
        )
        responses = Response.objects.bulk_create(
            Response(
                prompt=prompt, content=side, source="imported" if version is None else "model", model_version=version
            )
            for prompt, (a, b, _) in zip(prompts, votes, strict=True)
            for side, version in (("a", a), ("b", b))
        )
        tasks = Task.objects.bulk_create(Task(project=project, prompt=prompt, kind="pairwise") for prompt in prompts)
        TaskResponse.objects.bulk_create(
            TaskResponse(task=task, response=response, position=position)
            for i, task in enumerate(tasks)
            for position, response in enumerate(responses[2 * i : 2 * i + 2])
        )
        Annotation.objects.bulk_create(
            Annotation(
                task=task,
                annotator=annotator if source == "human" else None,
                source=source,
                choice=choice,
                strength=None if choice == "tie" else 1,
            )
            for task, (_, _, choice) in zip(tasks, votes, strict=True)
        )
        return tasks

    return add
