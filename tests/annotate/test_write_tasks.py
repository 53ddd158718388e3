"""Write tasks and corrections: an annotator's written answer is a human Response with them as its author, stored
once however often it is sent, changed in place on My work, and skipped by agreement, quality and gold."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from annotate.models import (
    Annotation,
    AnnotationRevision,
    GoldRefused,
    LeaseError,
    Membership,
    Project,
    Prompt,
    Response,
    Task,
    TaskKind,
    TaskResponse,
)
from annotate.quality import annotator_quality, read_answers

PROMPT = [{"role": "user", "content": "Name a prime."}]


def write_task(project, draft=None, required=1):
    prompt = Prompt.objects.create(project=project, external_id=f"w{Prompt.objects.count()}", messages=PROMPT)
    task = Task.objects.create(project=project, prompt=prompt, kind=TaskKind.WRITE, required_annotations=required)
    if draft is not None:
        draft_response = Response.objects.create(prompt=prompt, content=draft)
        TaskResponse.objects.create(task=task, response=draft_response, position=0)
    return task


def rating_task(project, text="Nine."):
    prompt = Prompt.objects.create(project=project, external_id=f"r{Prompt.objects.count()}", messages=PROMPT)
    task = Task.objects.create(project=project, prompt=prompt, kind=TaskKind.RATING)
    TaskResponse.objects.create(task=task, response=Response.objects.create(prompt=prompt, content=text), position=0)
    return task


@pytest.fixture
def writing(project):
    project.task_kinds = [*project.task_kinds, TaskKind.WRITE]
    project.save(update_fields=["task_kinds"])
    return project


def test_new_projects_ask_for_writing_only_when_enabled(db):
    assert TaskKind.WRITE not in Project.objects.create(name="P", slug="p").task_kinds


class TestSubmit:
    def test_the_written_text_is_a_human_response_by_its_annotator(self, writing, annotator):
        task = write_task(writing)
        annotation = writing.next_assignment(annotator).submit({"text": "Two.\r\nIt is prime."}, user=annotator)

        written = annotation.written_response
        assert (written.content, written.source, written.author, written.prompt_id) == (
            "Two.\nIt is prime.",
            Response.Source.HUMAN,
            annotator,
            task.prompt_id,
        )
        assert annotation.answer() == {"text": "Two.\nIt is prime.", "comment": ""}
        assert not task.task_responses.filter(response=written).exists()  # an answer, not one of the task's responses

    def test_submitting_twice_stores_one_response(self, writing, annotator):
        task = write_task(writing)
        lease = writing.next_assignment(annotator)
        first = lease.submit({"text": "Two."}, user=annotator)
        again = lease.submit({"text": "Two."}, user=annotator)
        assert again.pk == first.pk
        assert Response.objects.filter(prompt=task.prompt, source=Response.Source.HUMAN).count() == 1
        with pytest.raises(LeaseError, match="already answered this task differently"):
            lease.submit({"text": "Three."}, user=annotator)
        assert Response.objects.filter(prompt=task.prompt, source=Response.Source.HUMAN).count() == 1

    @pytest.mark.parametrize("text", [None, "", "  \n\t "])
    def test_an_empty_answer_is_refused(self, writing, annotator, text):
        write_task(writing)
        lease = writing.next_assignment(annotator)
        with pytest.raises(ValidationError) as refused:
            lease.submit({"text": text}, user=annotator)
        assert refused.value.message_dict == {"text": ["Write the answer: it is empty."]}
        assert not Response.objects.filter(source=Response.Source.HUMAN).exists()
        assert not Annotation.objects.exists()

    def test_an_answer_over_the_text_limit_is_refused(self, writing, annotator, settings):
        settings.ARBITER_IMPORT_MAX_FIELD_BYTES = 10
        write_task(writing)
        with pytest.raises(ValidationError, match="over the limit of 10"):
            writing.next_assignment(annotator).submit({"text": "é" * 6}, user=annotator)

    def test_fields_of_other_kinds_are_refused(self, writing, annotator):
        write_task(writing)
        with pytest.raises(ValidationError, match="Not a field of a write answer"):
            writing.next_assignment(annotator).submit({"text": "Two.", "score": 3}, user=annotator)


class TestCorrection:
    def test_a_rating_with_a_better_answer_keeps_it_as_a_human_response(self, project, annotator):
        task = rating_task(project)
        annotation = project.next_assignment(annotator).submit(
            {"score": 1, "correction": "Two is the smallest prime."}, user=annotator
        )
        assert annotation.score == 1
        assert annotation.written_response.content == "Two is the smallest prime."
        assert annotation.written_response.author == annotator
        assert annotation.written_response.prompt_id == task.prompt_id
        assert annotation.answer()["correction"] == "Two is the smallest prime."
        assert annotation.summary() == "1, and a better answer"

    def test_a_blank_correction_is_none(self, project, annotator):
        rating_task(project)
        annotation = project.next_assignment(annotator).submit({"score": 4, "correction": "  "}, user=annotator)
        assert annotation.written_response is None
        assert "correction" not in annotation.answer()

    def test_a_correction_that_is_the_response_is_refused(self, project, annotator):
        rating_task(project, "Nine.")
        with pytest.raises(ValidationError, match="the response as it is"):
            project.next_assignment(annotator).submit({"score": 2, "correction": " Nine. "}, user=annotator)


class TestChange:
    def test_changing_a_written_answer_rewrites_its_response_and_keeps_the_old_text(self, writing, annotator):
        write_task(writing, required=2)
        annotation = writing.next_assignment(annotator).submit({"text": "Two."}, user=annotator)
        response_id = annotation.written_response_id

        assert annotation.change({"text": "Two, the only even prime."}, user=annotator)

        annotation.refresh_from_db()
        assert annotation.written_response_id == response_id
        assert Response.objects.get(pk=response_id).content == "Two, the only even prime."
        assert AnnotationRevision.objects.get(annotation=annotation).answer == {"text": "Two.", "comment": ""}
        assert not annotation.change({"text": "Two, the only even prime."}, user=annotator)  # the same again

    def test_a_correction_can_be_added_changed_and_taken_back(self, project, annotator):
        task = rating_task(project)
        Task.objects.filter(pk=task.pk).update(required_annotations=2)
        annotation = project.next_assignment(annotator).submit({"score": 2}, user=annotator)

        annotation.change({"score": 2, "correction": "Two."}, user=annotator)
        written = Annotation.objects.get(pk=annotation.pk).written_response
        assert (written.content, written.author) == ("Two.", annotator)

        annotation.change({"score": 2}, user=annotator)
        assert Annotation.objects.get(pk=annotation.pk).written_response is None
        assert not Response.objects.filter(pk=written.pk).exists()
        assert AnnotationRevision.objects.filter(annotation=annotation).count() == 2


class TestNoAgreementOnWriting:
    def test_agreement_quality_and_gold_skip_write_tasks(self, writing, annotator, make_user):
        task = write_task(writing, required=2)
        other = make_user("other")
        Membership.objects.create(project=writing, user=other)
        writing.next_assignment(annotator).submit({"text": "Two."}, user=annotator)
        writing.next_assignment(other).submit({"text": "Three."}, user=other)

        stats = writing.agreement()
        assert [row.kind for row in stats["by_kind"]] == ["rating", "pairwise", "ranking"]
        assert all(row.units == 0 for row in stats["by_kind"])
        assert len(read_answers(writing).kind) == 0
        quality = annotator_quality(writing, fast_seconds=5)  # members with only written answers: nothing to measure
        assert {row.username for row in quality.annotators} >= {"annotator", "other"}
        task.refresh_from_db()
        with pytest.raises(GoldRefused, match="is a written answer"):
            task.make_gold()


def test_only_human_responses_have_an_author(project, annotator):
    prompt = Prompt.objects.create(project=project, external_id="x", messages=PROMPT)
    Response.objects.create(prompt=prompt, content="mine", source=Response.Source.HUMAN, author=annotator)
    with pytest.raises(IntegrityError), transaction.atomic():
        Response.objects.create(prompt=prompt, content="model's", source=Response.Source.IMPORTED, author=annotator)


def test_deleting_a_prompt_takes_its_written_answers_with_it(writing, annotator):
    task = write_task(writing)
    writing.next_assignment(annotator).submit({"text": "Two."}, user=annotator)
    task.prompt.delete()
    assert not Annotation.objects.exists() and not Response.objects.exists()
