"""Fixtures for the API tests: clients that carry a user's bearer token, and tasks to annotate."""

import itertools

import pytest
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from annotate.models import ApiToken, Membership, Prompt, Response, Task, TaskResponse

TRANSCRIPT = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Name a prime."},
]
_prompt_numbers = itertools.count()


@pytest.fixture
def throttle_rates(monkeypatch):
    """Set a throttle scope's rate for one test (DRF reads the rates once, into the throttle class)."""

    def set_rate(scope: str, rate: str) -> None:
        monkeypatch.setitem(ScopedRateThrottle.THROTTLE_RATES, scope, rate)

    return set_rate


@pytest.fixture
def admin(make_user):
    return make_user("admin", is_staff=True, is_superuser=True)


@pytest.fixture
def second_annotator(project, make_user):
    user = make_user("second")
    Membership.objects.create(project=project, user=user)
    return user


@pytest.fixture
def anonymous_client():
    return APIClient()


@pytest.fixture
def client_for():
    """An API client authenticated as `user` with a fresh bearer token (the way scripts call the API)."""

    def make(user) -> APIClient:
        _, plaintext = ApiToken.issue(user, "tests")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        return client

    return make


@pytest.fixture
def lead_client(client_for, lead):
    return client_for(lead)


@pytest.fixture
def make_task():
    """A task of `kind` over fresh responses with the given texts, to a fresh prompt."""

    def make(project, kind="pairwise", texts=("Two.", "Seven."), *, required=None, split="train") -> Task:
        prompt = Prompt.objects.create(
            project=project, external_id=f"p{next(_prompt_numbers)}", messages=TRANSCRIPT, split=split
        )
        task = Task.objects.create(
            project=project, prompt=prompt, kind=kind, required_annotations=required or project.overlap
        )
        for position, text in enumerate(texts):
            response = Response.objects.create(prompt=prompt, content=text)
            TaskResponse.objects.create(task=task, response=response, position=position)
        return task

    return make
