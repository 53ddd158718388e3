"""`manage.py add_judge` and `run_judge`: the issue's command line, refusing bad input by option, and a run in place
that prints what it answered, failed and skipped."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models.signals import post_save

from annotate.models import Annotation, Judge, JudgeRun
from models_registry.models import ModelVersion
from tests.training.test_reward_judge import TEXTS, make_task


def command(*args):
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def reward_version(db, project, tiny):
    return ModelVersion.register(project=project, kind=ModelVersion.Kind.REWARD, base_model=str(tiny.reward))


def test_add_judge_adds_a_reward_model_judge_with_its_own_identity(project, reward_version):
    out = command("add_judge", project.slug, "rm", "--reward-model", f"reward-v{reward_version.version}")

    judge = Judge.objects.get(project=project, name="rm")
    assert (judge.kind, judge.model_version) == ("reward_model", reward_version)
    assert not judge.user.is_active and not judge.user.has_usable_password()
    assert judge.user.username in out


def test_add_judge_adds_an_llm_judge_with_its_rubric(db, project, tmp_path):
    rubric = tmp_path / "rubric.md"
    rubric.write_text("Prefer answers that are correct, then short.\n", encoding="utf-8")

    command(
        "add_judge", project.slug, "llm", "--endpoint", "http://127.0.0.1:8000/v1", "--model", "tiny-chat",
        "--rubric", str(rubric), "--api-key-env", "JUDGE_KEY", "--concurrency", "4", "--requests-per-minute", "60",
    )  # fmt: skip

    judge = Judge.objects.get(project=project, name="llm")
    assert (judge.kind, judge.endpoint, judge.model_name, judge.api_key_env) == (
        "llm", "http://127.0.0.1:8000/v1", "tiny-chat", "JUDGE_KEY"
    )  # fmt: skip
    assert (judge.rubric, judge.concurrency, judge.requests_per_minute) == (rubric.read_text(), 4, 60)


@pytest.mark.parametrize(
    "args, message",
    [
        (["rm", "--reward-model", "reward-v9"], "--reward-model: no reward model 'reward-v9'"),
        (["rm", "--reward-model", "policy-v1"], "--reward-model: no reward model 'policy-v1'"),
        (["llm", "--endpoint", "http://127.0.0.1:8000/v1"], "--model: An LLM judge needs it."),
        (["llm", "--endpoint", "not a url", "--model", "m"], "--endpoint: Enter a valid URL."),
        (["no spaces", "--endpoint", "http://h/v1", "--model", "m"], "name: Enter a valid “slug”"),
        (["rm", "--reward-model", "1", "--model", "m"], "are for an LLM judge"),
        (["llm", "--endpoint", "http://h/v1", "--model", "m", "--rubric", "/nowhere.md"], "--rubric: cannot read"),
    ],
)
def test_add_judge_refuses_bad_input_naming_the_option(project, reward_version, args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        command("add_judge", project.slug, *args)
    assert not Judge.objects.exists()


def test_add_judge_refuses_a_name_the_project_has(project, reward_version):
    command("add_judge", project.slug, "rm", "--reward-model", "1")
    with pytest.raises(CommandError, match="already exists"):
        command("add_judge", project.slug, "rm", "--reward-model", "1")
    with pytest.raises(CommandError, match="No project 'nope'"):
        command("add_judge", "nope", "rm", "--reward-model", "1")


def test_run_judge_runs_in_place_and_prints_its_counts(project, reward_version, django_capture_on_commit_callbacks):
    tasks = [make_task(project, "pairwise", TEXTS[i : i + 2]) for i in range(3)]
    make_task(project, "rating", ["Seven."])  # a pairs-trained model cannot rate: skipped
    command("add_judge", project.slug, "rm", "--reward-model", "reward-v1")

    with django_capture_on_commit_callbacks() as queued:
        out = command("run_judge", project.slug, "rm", "--limit", "10")

    assert queued == []  # nothing for a worker: it ran here

    assert "answered 3, failed 0, skipped 1 (of 4)" in out
    job = JudgeRun.objects.get()
    assert job.status == "succeeded" and job.limit == 10
    assert set(Annotation.objects.filter(source="judge").values_list("task_id", flat=True)) == {t.pk for t in tasks}
    assert "answered 0, failed 0, skipped 2 (of 2)" in command("run_judge", project.slug, "rm", "--limit", "2")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scope", "sample"], "--limit: A sample needs its size."),
        (["--scope", "round"], "--round: A run over a round's samples needs the round's number."),
        (["--limit", "0"], "--limit: Give 1 or more."),
    ],
)
def test_run_judge_refuses_a_run_that_cannot_be(project, reward_version, args, message):
    command("add_judge", project.slug, "rm", "--reward-model", "1")
    with pytest.raises(CommandError, match=message):
        command("run_judge", project.slug, "rm", *args)
    assert not JudgeRun.objects.exists()
    with pytest.raises(CommandError, match="No judge 'other' in project 'helpfulness'"):
        command("run_judge", project.slug, "other")


def test_run_judge_interrupted_leaves_no_run_running(project, reward_version):
    [make_task(project, "pairwise", TEXTS[i : i + 2]) for i in range(3)]
    command("add_judge", project.slug, "rm", "--reward-model", "1")

    def ctrl_c(sender, instance, created, **kwargs):
        raise KeyboardInterrupt  # as the operator's Ctrl-C arrives, in the middle of recording answers

    post_save.connect(ctrl_c, sender=Annotation)
    try:
        with pytest.raises(KeyboardInterrupt):
            command("run_judge", project.slug, "rm")
    finally:
        post_save.disconnect(ctrl_c, sender=Annotation)

    job = JudgeRun.objects.get()
    assert (job.status, job.error) == ("cancelled", "Interrupted at the command line.") and job.finished_at


@pytest.mark.parametrize(
    "text, message",
    [("Be fair.\x00", "--rubric: Must not contain a NUL character."), ("x" * 2049, "--rubric: Is 2,049 bytes, over")],
)
def test_add_judge_refuses_a_rubric_no_request_should_carry(project, tmp_path, settings, text, message):
    settings.ARBITER_IMPORT_MAX_FIELD_BYTES = 2048
    rubric = tmp_path / "rubric.md"
    rubric.write_text(text, encoding="utf-8")
    with pytest.raises(CommandError, match=message):
        command("add_judge", project.slug, "llm", "--endpoint", "http://h/v1", "--model", "m", "--rubric", str(rubric))
    assert not Judge.objects.exists()
