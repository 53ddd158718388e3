"""The data model's guarantees: what the database refuses, and what model validation refuses before it."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from annotate.models import Annotation, Project, Prompt, Response, Task, TaskResponse

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def prompt(project):
    return Prompt.objects.create(project=project, external_id="p1", messages=MESSAGES)


@pytest.fixture
def pairwise_task(project, prompt):
    task = Task.objects.create(project=project, prompt=prompt, kind="pairwise")
    for position, text in enumerate(["Hello!", "Go away."]):
        response = Response.objects.create(prompt=prompt, content=text)
        TaskResponse.objects.create(task=task, response=response, position=position)
    return task


@pytest.fixture
def rating_task(project, prompt):
    task = Task.objects.create(project=project, prompt=prompt, kind="rating")
    response = Response.objects.create(prompt=prompt, content="Hello!")
    TaskResponse.objects.create(task=task, response=response, position=0)
    return task


def refused_by_database(create):
    """Run `create` in a savepoint and report whether the database refused it."""
    try:
        with transaction.atomic():
            create()
    except IntegrityError:
        return True
    return False


class TestAnnotationConstraints:
    def test_second_annotation_by_same_annotator_on_a_task_is_refused(self, pairwise_task, annotator):
        Annotation.objects.create(task=pairwise_task, annotator=annotator, choice="a", strength=1)
        assert refused_by_database(
            lambda: Annotation.objects.create(task=pairwise_task, annotator=annotator, choice="b", strength=1)
        )
        assert Annotation.objects.filter(task=pairwise_task).count() == 1

    def test_two_annotators_may_annotate_the_same_task(self, pairwise_task, annotator, lead):
        Annotation.objects.create(task=pairwise_task, annotator=annotator, choice="a", strength=1)
        Annotation.objects.create(task=pairwise_task, annotator=lead, choice="b", strength=2)
        assert Annotation.objects.filter(task=pairwise_task).count() == 2

    def test_human_annotation_without_annotator_is_refused(self, pairwise_task):
        assert refused_by_database(
            lambda: Annotation.objects.create(
                task=pairwise_task, annotator=None, source=Annotation.Source.HUMAN, choice="a", strength=1
            )
        )
        assert not Annotation.objects.exists()

    def test_imported_annotations_without_annotator_may_repeat_on_one_task(self, pairwise_task):
        # NULL annotators never collide in the (task, annotator) unique constraint.
        for choice in ("a", "b"):
            Annotation.objects.create(
                task=pairwise_task, annotator=None, source=Annotation.Source.IMPORTED, choice=choice, strength=1
            )
        assert Annotation.objects.filter(task=pairwise_task, annotator=None).count() == 2

    @pytest.mark.parametrize("strength", [0, 3])
    def test_strength_outside_1_and_2_is_refused(self, pairwise_task, annotator, strength):
        assert refused_by_database(
            lambda: Annotation.objects.create(task=pairwise_task, annotator=annotator, choice="a", strength=strength)
        )

    def test_unknown_choice_is_refused(self, pairwise_task, annotator):
        assert refused_by_database(
            lambda: Annotation.objects.create(task=pairwise_task, annotator=annotator, choice="c", strength=1)
        )


class TestProjectConstraints:
    @pytest.mark.parametrize(("rating_min", "rating_max"), [(5, 5), (5, 1)])
    def test_rating_scale_without_room_is_refused(self, db, rating_min, rating_max):
        assert refused_by_database(
            lambda: Project.objects.create(name="Bad", slug="bad", rating_min=rating_min, rating_max=rating_max)
        )
        assert not Project.objects.filter(slug="bad").exists()

    def test_overlap_zero_is_refused(self, db):
        assert refused_by_database(lambda: Project.objects.create(name="Bad", slug="bad", overlap=0))

    def test_slug_is_unique(self, project):
        assert refused_by_database(lambda: Project.objects.create(name="Other", slug=project.slug))


class TestPromptConstraints:
    def test_external_id_is_unique_within_a_project(self, prompt, project):
        assert refused_by_database(
            lambda: Prompt.objects.create(project=project, external_id=prompt.external_id, messages=MESSAGES)
        )
        assert Prompt.objects.filter(project=project).count() == 1

    def test_external_id_is_reusable_in_another_project(self, prompt):
        other = Project.objects.create(name="Harmlessness", slug="harmlessness")
        copy = Prompt.objects.create(project=other, external_id=prompt.external_id, messages=MESSAGES)
        assert Prompt.objects.filter(external_id=prompt.external_id).count() == 2
        assert copy.project == other


class TestTaskResponseConstraints:
    def test_one_response_per_position(self, pairwise_task, prompt):
        extra = Response.objects.create(prompt=prompt, content="Hi.")
        assert refused_by_database(lambda: TaskResponse.objects.create(task=pairwise_task, response=extra, position=0))

    def test_a_response_appears_once_in_a_task(self, pairwise_task):
        first = pairwise_task.task_responses.get(position=0).response
        assert refused_by_database(lambda: TaskResponse.objects.create(task=pairwise_task, response=first, position=2))

    def test_response_ids_are_in_position_order(self, project, prompt):
        task = Task.objects.create(project=project, prompt=prompt, kind="pairwise")
        first = Response.objects.create(prompt=prompt, content="first created")
        second = Response.objects.create(prompt=prompt, content="second created")
        TaskResponse.objects.create(task=task, response=second, position=0)
        TaskResponse.objects.create(task=task, response=first, position=1)
        assert task.response_ids() == [second.pk, first.pk]


class TestProjectClean:
    def test_the_fixture_project_is_valid(self, project):
        project.full_clean()

    def test_unknown_task_kind_is_rejected(self, project):
        project.task_kinds = ["pairwise", "essay"]
        with pytest.raises(ValidationError) as excinfo:
            project.full_clean()
        assert excinfo.value.message_dict["task_kinds"] == ["Unknown task kinds: essay."]

    def test_no_task_kind_is_rejected(self, project):
        project.task_kinds = []
        with pytest.raises(ValidationError) as excinfo:
            project.full_clean()
        assert "task_kinds" in excinfo.value.message_dict

    def test_description_for_a_point_off_the_scale_is_rejected(self, project):
        project.rating_descriptions = {"1": "Useless", "5": "Ideal", "6": "Beyond ideal", "0": "Nothing"}
        with pytest.raises(ValidationError) as excinfo:
            project.full_clean()
        assert excinfo.value.message_dict["rating_descriptions"] == ["Not points of the scale: 0, 6."]

    def test_duplicate_labels_are_rejected(self, project):
        project.labels = ["unsafe", "off-topic", "unsafe"]
        with pytest.raises(ValidationError) as excinfo:
            project.full_clean()
        assert excinfo.value.message_dict["labels"] == ["Label names must be unique."]

    def test_blank_label_is_rejected(self, project):
        project.labels = ["unsafe", "  "]
        with pytest.raises(ValidationError) as excinfo:
            project.full_clean()
        assert "labels" in excinfo.value.message_dict

    def test_inverted_scale_is_rejected_before_the_database(self, project):
        project.rating_min, project.rating_max = 5, 1
        with pytest.raises(ValidationError) as excinfo:
            project.full_clean()
        assert "rating_max" in excinfo.value.message_dict


class TestAnnotationClean:
    def test_score_outside_the_project_scale_is_rejected(self, rating_task, annotator):
        annotation = Annotation(task=rating_task, annotator=annotator, score=6)
        with pytest.raises(ValidationError) as excinfo:
            annotation.full_clean()
        assert excinfo.value.message_dict["score"] == ["6 is outside the scale 1–5."]

    def test_score_on_a_custom_scale_is_checked_against_that_scale(self, rating_task, annotator, project):
        project.rating_min, project.rating_max = -2, 2
        project.save()
        Annotation(task=rating_task, annotator=annotator, score=-2).full_clean()
        with pytest.raises(ValidationError):
            Annotation(task=rating_task, annotator=annotator, score=3).full_clean()

    def test_score_inside_the_scale_is_accepted(self, rating_task, annotator):
        Annotation(task=rating_task, annotator=annotator, score=5, labels=["unsafe"]).full_clean()

    def test_label_outside_the_project_set_is_rejected(self, rating_task, annotator):
        annotation = Annotation(task=rating_task, annotator=annotator, score=3, labels=["rude"])
        with pytest.raises(ValidationError) as excinfo:
            annotation.full_clean()
        assert "labels" in excinfo.value.message_dict

    def test_pairwise_tie_with_strength_is_rejected(self, pairwise_task, annotator):
        annotation = Annotation(task=pairwise_task, annotator=annotator, choice="tie", strength=2)
        with pytest.raises(ValidationError) as excinfo:
            annotation.full_clean()
        assert "strength" in excinfo.value.message_dict
