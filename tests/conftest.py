"""Shared fixtures: named users and a project they belong to, instead of a factory framework."""

import os

# No model hub is reachable, and tests must never try one: set before anything imports huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from django.db import connection  # noqa: E402

from annotate.models import Membership, Project  # noqa: E402
from tests.celery_worker import worker_environment  # noqa: E402

PASSWORD = "correct-horse-battery"


def pytest_addoption(parser):
    parser.addoption(
        "--database-tests-only",
        action="store_true",
        help="run only the tests that use the database (make test runs the rest once, in its PostgreSQL pass)",
    )


def _uses_database(item) -> bool:
    return bool({"db", "transactional_db"} & set(getattr(item, "fixturenames", ()))) or bool(
        item.get_closest_marker("django_db")
    )


def _has_cuda() -> bool:
    try:
        import torch  # the web-only install has no torch: no GPU either
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    # Behaviour that differs on PostgreSQL (locking, concurrency) is only meaningful there.
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        skip = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://… (make test does)")
        for item in items:
            if "postgres" in item.keywords:
                item.add_marker(skip)
    if any("gpu" in item.keywords for item in items) and not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false here)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if config.getoption("--database-tests-only"):
        # A test that never touches the database does the same on SQLite as on PostgreSQL: once is enough.
        deselected = [item for item in items if not _uses_database(item)]
        items[:] = [item for item in items if _uses_database(item)]
        config.hook.pytest_deselected(items=deselected)


@pytest.fixture(scope="session", autouse=True)
def broker_dir(tmp_path_factory):
    """The embedded broker's folders for this test session: messages sent here never reach var/celery-broker, and
    a worker started with ARBITER_VAR_DIR=<this>.parent reads them."""
    from arbiter.celery import app

    var = tmp_path_factory.mktemp("var")
    folders = {"data_folder_in": var / "celery-broker" / "queue", "data_folder_out": var / "celery-broker" / "queue"}
    folders["control_folder"] = var / "celery-broker" / "control"
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    if app.conf.broker_url.startswith("filesystem"):
        app.conf.broker_transport_options = {**{k: str(v) for k, v in folders.items()}, "store_processed": False}
    return var


@pytest.fixture(autouse=True)
def _files_in_tmp(settings, tmp_path):
    # Exports and training artifacts go to the test's own folder, never var/.
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.ARBITER_ARTIFACTS_ROOT = tmp_path / "artifacts"


def write_model_files(path) -> str:
    """A folder with a model's files (config, weights, fast tokenizer), none of them loadable: what launching reads.
    Rounds that train start from the tiny model (tests/training/conftest.py)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"")
    (path / "tokenizer.json").write_text("{}")
    return str(path)


@pytest.fixture
def base(tmp_path, settings):
    """A round's base: a model folder under an allowed model root (launching reads its files; a worker loads it)."""
    settings.ARBITER_MODEL_ROOTS = [tmp_path / "models"]
    return write_model_files(tmp_path / "models" / "base")


@pytest.fixture
def worker_env(broker_dir, _files_in_tmp):
    """The environment of a `celery worker` (tests/celery_worker.py) or a command that shares this test's database,
    broker and files."""
    return worker_environment(broker_dir)


@pytest.fixture(autouse=True)
def _empty_cache():
    # DRF's throttles count requests in the cache: one test's logins must not throttle the next test's.
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # Tests make many users; the production hasher would spend much of the run hashing their passwords.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def enqueued(monkeypatch):
    """The quality report ids handed to the Celery task, which runs nowhere (no broker here)."""
    from annotate import tasks

    ids = []
    monkeypatch.setattr(tasks.refresh_quality, "delay", ids.append)
    return ids


@pytest.fixture
def make_user(django_user_model):
    def make(username: str, **extra):
        return django_user_model.objects.create_user(username=username, password=PASSWORD, **extra)

    return make


@pytest.fixture
def project(db):
    return Project.objects.create(
        name="Helpfulness",
        slug="helpfulness",
        guidelines="Prefer the **helpful** answer.",
        rating_descriptions={"1": "Useless", "5": "Ideal"},
        labels=["factual error", "unsafe", "off-topic"],
        overlap=2,
    )


@pytest.fixture
def lead(project, make_user):
    user = make_user("lead", is_staff=True)
    Membership.objects.create(project=project, user=user, role=Membership.Role.LEAD)
    return user


@pytest.fixture
def annotator(project, make_user):
    user = make_user("annotator")
    Membership.objects.create(project=project, user=user, role=Membership.Role.ANNOTATOR)
    return user


@pytest.fixture
def outsider(project, make_user):
    return make_user("outsider")


@pytest.fixture
def on_postgres():
    return connection.vendor == "postgresql"
