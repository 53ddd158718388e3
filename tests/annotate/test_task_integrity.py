"""A task's prompt and responses stay inside one project, and its count and status follow its annotations."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from annotate.models import Annotation, Project, Prompt, Response, Task, TaskResponse


def _prompt(project, external_id="p1"):
    return Prompt.objects.create(project=project, external_id=external_id, messages=[{"role": "user", "content": "Hi"}])


def test_task_refuses_a_prompt_of_another_project(project):
    other = Project.objects.create(name="Other", slug="other")
    task = Task(project=project, prompt=_prompt(other), kind="rating")

    with pytest.raises(ValidationError) as error:
        task.full_clean()

    assert "prompt" in error.value.message_dict


def test_task_response_refuses_a_response_to_another_prompt(project):
    task = Task.objects.create(project=project, prompt=_prompt(project, "p1"), kind="rating")
    stray = Response.objects.create(prompt=_prompt(project, "p2"), content="elsewhere")

    with pytest.raises(ValidationError) as error:
        TaskResponse(task=task, response=stray, position=0).full_clean()

    assert "response" in error.value.message_dict


def test_refresh_progress_completes_and_reopens_a_task(project, annotator, lead):
    prompt = _prompt(project)
    task = Task.objects.create(project=project, prompt=prompt, kind="rating", required_annotations=2)
    TaskResponse.objects.create(task=task, response=Response.objects.create(prompt=prompt, content="x"), position=0)
    for user in (annotator, lead):
        Annotation.objects.create(task=task, annotator=user, score=3)

    task.refresh_progress()
    assert (task.annotation_count, task.status) == (2, Task.Status.COMPLETE)

    task.annotations.filter(annotator=lead).delete()
    task.refresh_progress()
    task.refresh_from_db()
    assert (task.annotation_count, task.status) == (1, Task.Status.OPEN)


def test_deleting_an_annotation_in_the_admin_reopens_its_task(client, project, annotator, django_user_model):
    prompt = _prompt(project)
    task = Task.objects.create(project=project, prompt=prompt, kind="rating", required_annotations=1)
    TaskResponse.objects.create(task=task, response=Response.objects.create(prompt=prompt, content="x"), position=0)
    annotation = Annotation.objects.create(task=task, annotator=annotator, score=4)
    task.refresh_progress()
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))

    client.post(reverse("admin:annotate_annotation_delete", args=[annotation.pk]), {"post": "yes"})

    task.refresh_from_db()
    assert not Annotation.objects.filter(pk=annotation.pk).exists()
    assert (task.annotation_count, task.status) == (0, Task.Status.OPEN)


def test_annotation_summary_reads_each_kind(project, annotator):
    prompt = _prompt(project)
    kinds = {
        kind: Task.objects.create(project=project, prompt=prompt, kind=kind) for kind, _ in Task.kind.field.choices
    }
    rating = Annotation(task=kinds["rating"], score=4, labels=["unsafe"])
    pairwise = Annotation(task=kinds["pairwise"], choice="b", strength=2, both_bad=True)
    ranking = Annotation(task=kinds["ranking"], ranking=[[3], [1, 2]])

    assert [a.summary() for a in (rating, pairwise, ranking)] == ["4 (unsafe)", "B much better, both bad", "3 > 1 = 2"]
