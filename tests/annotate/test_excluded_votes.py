"""A member whose votes are excluded (Membership.votes_excluded) counts in no export, round, agreement or win rate."""

import json

import pytest
from django.core.exceptions import ValidationError

from annotate.exports import create_snapshot, run_snapshot
from annotate.models import Annotation, Membership, Task
from models_registry.measures import cross_version_votes
from tests.annotate.test_exports import build_data
from training.rounds import launch_round

pytestmark = pytest.mark.django_db

EXPORTS = [
    ("pairs", "jsonl", {}),
    ("pairs", "parquet", {"include_ties": True, "include_both_bad": True, "ratings_as_pairs": True}),
    ("pairs", "jsonl", {"aggregation": "dawid-skene", "include_ties": True}),
    ("unpaired", "jsonl", {}),
    ("votes", "jsonl", {}),
    ("sft", "jsonl", {"ratings_as_pairs": True}),
]


@pytest.fixture
def data(project, django_user_model, tmp_path, settings):
    settings.SECRET_KEY = "fixed"  # the votes kind's pseudonyms
    data = build_data(project, django_user_model, tmp_path)
    for task in Task.objects.filter(project=project):
        task.refresh_progress()  # build_data writes annotations past the queue
    return data


def exclude(project, user, excluded=True):
    Membership.objects.filter(project=project, user=user).update(votes_excluded=excluded)


def hashes(project):
    return [
        run_snapshot(create_snapshot(project, kind=kind, format=format, filters=filters)).sha256
        for kind, format, filters in EXPORTS
    ]


def test_every_export_is_the_one_it_would_be_without_their_answers(project, data):
    everyone = hashes(project)
    exclude(project, data.bob)
    without_bob = hashes(project)

    exclude(project, data.bob, excluded=False)
    assert hashes(project) == everyone  # reversible: included again, their answers count again
    Annotation.objects.filter(annotator=data.bob).delete()

    assert hashes(project) == without_bob
    assert all(before != after for before, after in zip(everyone, without_bob, strict=True))


def test_a_rounds_snapshot_leaves_them_out(project, data, base):
    exclude(project, data.alice)
    training_round = launch_round(
        project, method="dpo", base=base, filters={"split": "eval", "include_ties": True, "include_both_bad": True}
    )
    snapshot = run_snapshot(training_round.snapshot)
    rows = [json.loads(line) for line in snapshot.file.open("rb").read().splitlines()]
    # Eval prompt p2: t2 had alice's tie alone, t3 alice's and bob's "both bad" votes: only bob's is left.
    assert [(row["task_id"], row["votes"], row["both_bad"]) for row in rows] == [(data.t3.pk, 1, True)]


def test_an_export_of_their_answers_alone_is_refused_by_name(project, data):
    exclude(project, data.carol)
    with pytest.raises(ValidationError) as refused:
        create_snapshot(project, kind="votes", filters={"annotator": "carol"})
    assert refused.value.message_dict == {
        "annotator": ["carol's votes are excluded from helpfulness's data: none to export."]
    }


def test_agreement_and_win_rates_leave_them_out(project, data):
    by_annotator = {row.annotator for row in project.agreement()["by_annotator"]}
    assert by_annotator == {"alice", "bob", "carol"}
    assert len(cross_version_votes(project)) == 3  # t1: model v1 against reference data

    exclude(project, data.carol)

    assert {row.annotator for row in project.agreement()["by_annotator"]} == {"alice", "bob"}
    assert [vote.annotation_id for vote in cross_version_votes(project)] == [data.t1_alice.pk, data.t1_bob.pk]
