"""A round's samples come back as the kinds of task the project enables: a ratings-only project (as for KTO) gets
rating tasks of its train samples and no train pairs it could never serve; its eval pairs still measure the round."""

import pytest

from annotate.models import Task
from tests.training.test_identical_answers import fake_model, sample, versions  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


def test_a_ratings_only_project_gets_rating_tasks_and_no_train_pairs(project, versions, fake_model):  # noqa: F811
    project.task_kinds = ["rating"]
    project.save()

    sample(project, versions)

    train = Task.objects.filter(prompt__split="train")
    assert set(train.values_list("kind", flat=True)) == {"rating"} and train.count() == 6  # one per distinct sample
    assert Task.objects.filter(prompt__split="eval", kind="pairwise").count() == 2  # the round's yardstick
