"""Judges' votes in datasets: none by default (votes=human), in no export, fit or measure; only theirs (judge); or
beside people's (both), each judge's vote weighted by its measured agreement with people, recorded on the snapshot."""

import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from annotate import judges
from annotate.aggregation import fit_sides
from annotate.exports import create_snapshot, run_snapshot
from annotate.judge_quality import measured_agreement
from annotate.judges import Verdict
from annotate.models import Judge, Task
from annotate.quality import annotator_quality
from annotate.quality_reports import figures_of
from models_registry.measures import cross_version_votes, round_win_rates
from tests.annotate.test_exports import build_data, export, pair, rows_of
from training.rounds import launch_round

pytestmark = pytest.mark.django_db

KINDS = [
    ("pairs", "jsonl", {}),
    ("pairs", "parquet", {"include_ties": True, "include_both_bad": True, "ratings_as_pairs": True}),
    ("pairs", "jsonl", {"aggregation": "dawid-skene", "include_ties": True}),
    ("unpaired", "jsonl", {}),
    ("votes", "jsonl", {}),
    ("sft", "jsonl", {"ratings_as_pairs": True}),
    ("sft", "jsonl", {"aggregation": "dawid-skene"}),
]


@pytest.fixture
def data(project, django_user_model, tmp_path, settings):
    settings.SECRET_KEY = "fixed"  # the votes kind's pseudonyms
    data = build_data(project, django_user_model, tmp_path)
    for task in Task.objects.filter(project=project):
        task.refresh_progress()  # build_data writes annotations past the queue
    return data


@pytest.fixture
def judge(project):
    return Judge.create(project, "critic", kind=Judge.Kind.LLM, endpoint="http://127.0.0.1:9/v1", model_name="tiny")


def rating_task(response):
    return Task.objects.get(kind="rating", task_responses__response=response)


def judge_answers(d, judge):
    """The judge's answers to every task of build_data, recorded as a run records them. Against people's: t1 B much
    better (people: A), t2 a tie (as people), t3 A (as people, but not both bad), t4 r9 > r8 > r7, t5 the imported
    pair's rejected side; ratings r1 5 (people 5 and 4: no agreed score), r2 2 (as people), r7 3 (as), r8 1 (3)."""
    rejected = "b" if d.imported.choice == "a" else "a"
    answers = [
        (d.t1, {"choice": "b", "strength": 2, "both_bad": False}),
        (d.t2, {"choice": "tie", "strength": None, "both_bad": False}),
        (d.t3, {"choice": "a", "strength": 1, "both_bad": False}),
        (d.t4, {"ranking": [[d.r9.id], [d.r8.id], [d.r7.id]]}),
        (d.t5, {"choice": rejected, "strength": 1, "both_bad": False}),
        (rating_task(d.r1), {"score": 5, "labels": []}),
        (rating_task(d.r2), {"score": 2, "labels": ["unsafe"]}),
        (rating_task(d.r7), {"score": 3, "labels": []}),
        (rating_task(d.r8), {"score": 1, "labels": ["off-topic"]}),
    ]
    for task, answer in answers:
        assert judges.record(judge, Verdict(task.pk, answer, confidence=0.9, consistent=True)) is not None


def dataset_hashes(project, **filters):
    hashes = []
    for kind, format, options in KINDS:
        snapshot = run_snapshot(create_snapshot(project, kind=kind, format=format, filters={**options, **filters}))
        assert snapshot.status == "ready", snapshot.error
        hashes.append(snapshot.sha256)
    return hashes


def readings(project, d):
    """What every reader of annotations but the exports makes of the project."""
    stats = project.lead_stats()
    stats.pop("live_leases")
    quality = annotator_quality(project, fast_seconds=project.fast_seconds)
    return {
        "dawid_skene": fit_sides(project),
        "lead_stats": stats,
        "cross_version_votes": cross_version_votes(project),
        "round_win_rates": round_win_rates(project),
        "quality": [figures_of(row) for row in [quality.project, *quality.annotators]],
        "gold_answers": [d.t1.majority_answer(), rating_task(d.r2).majority_answer()],
        "tasks": list(Task.objects.order_by("pk").values_list("pk", "annotation_count", "status")),
        "progress": type(project).objects.values_list("task_count", "complete_task_count").get(pk=project.pk),
    }


class TestHuman:
    def test_a_judges_answers_change_no_dataset_and_no_measure(self, project, data, judge):
        before, measures = dataset_hashes(project), readings(project, data)
        judge_answers(data, judge)

        assert dataset_hashes(project) == before
        assert dataset_hashes(project, votes="human") == before  # the default, said
        assert readings(project, data) == measures

    def test_a_judge_named_as_the_annotator_is_refused(self, project, data, judge):
        judge_answers(data, judge)
        with pytest.raises(ValidationError) as refused:
            create_snapshot(project, kind="votes", filters={"annotator": judge.user.username})
        assert refused.value.message_dict == {
            "annotator": [f"{judge.user.username} is a judge: export votes=judge or both."]
        }
        theirs = rows_of(export(project, kind="votes", annotator=judge.user.username, votes="judge"))
        assert len(theirs) == 9

    def test_an_unknown_choice_is_refused_by_name(self, project, data):
        with pytest.raises(ValidationError) as refused:
            create_snapshot(project, kind="pairs", filters={"votes": "robots"})
        assert refused.value.message_dict == {"votes": ["Must be one of human, judge, both, not 'robots'."]}


class TestJudge:
    def test_pairs_are_the_judges_alone(self, project, data, judge):
        d = data
        judge_answers(d, judge)
        snapshot = export(project, votes="judge")
        assert snapshot.filters["votes"] == "judge" and snapshot.judge_weights is None
        assert rows_of(snapshot) == [
            pair(d, d.t1, d.r2, d.r1, 2.0, 1, 1, 0, 0, 1.0),
            pair(d, d.t3, d.r5, d.r6, 1.0, 1, 1, 0, 0, 1.0),  # not both bad to the judge; t2 a tie, left out
            pair(d, d.t4, d.r8, d.r7, 1.0, 1, 1, 0, 0, 1.0),
            pair(d, d.t4, d.r9, d.r7, 1.0, 1, 1, 0, 0, 1.0),
            pair(d, d.t4, d.r9, d.r8, 1.0, 1, 1, 0, 0, 1.0),
            pair(d, d.t5, d.go_away, d.hello, 1.0, 1, 1, 0, 0, 1.0),
        ]

    def test_every_other_kind_holds_its_answers_only(self, project, data, judge):
        d = data
        judge_answers(d, judge)
        votes = rows_of(export(project, kind="votes", votes="judge"))
        assert {row["source"] for row in votes} == {"judge"} and len(votes) == 9
        unpaired = rows_of(export(project, kind="unpaired", votes="judge"))
        assert [(row["response_id"], row["score"], row["ratings"]) for row in unpaired] == [
            (d.r1.id, 5.0, 1),
            (d.r2.id, 2.0, 1),
            (d.r7.id, 3.0, 1),
            (d.r8.id, 1.0, 1),
        ]
        sft = rows_of(export(project, kind="sft", votes="judge"))
        # The chosen sides of the judge's pairs; no human-written response (r10): that is no judge's answer.
        assert [row["response_id"] for row in sft] == [d.r2.id, d.r5.id, d.r8.id, d.r9.id, d.go_away.id]

    def test_dawid_skene_fits_the_judges_votes(self, project, data, judge):
        judge_answers(data, judge)
        model = fit_sides(project, votes="judge")
        assert set(model.voters) == {judge.user_id}
        rows = rows_of(export(project, votes="judge", aggregation="dawid-skene"))
        assert {row["task_id"] for row in rows} <= {data.t1.pk, data.t3.pk, data.t4.pk, data.t5.pk}


class TestBoth:
    def test_the_judge_counts_as_its_measured_agreement_of_a_vote(self, project, data, judge):
        d = data
        judge_answers(d, judge)
        w = measured_agreement(judge)
        assert w is not None and w > 0.5  # it agrees with people on 4 of the 7 tasks both answered
        snapshot = export(project, votes="both", include_ties=True, include_both_bad=True)
        assert snapshot.judge_weights == {"critic": w}
        rows = {(row["task_id"], row["chosen_id"], row["rejected_id"]): row for row in rows_of(snapshot)}

        # t1: people A +2, A +1, B −2 (sum +1), the judge B −2 at weight w: sum 1 − 2w < 0, B wins now.
        t1 = rows[d.t1.pk, d.r2.id, d.r1.id]
        assert (t1["votes"], t1["votes_chosen"], t1["votes_rejected"], t1["votes_tie"]) == (4, 2, 2, 0)
        assert t1["margin"] == pytest.approx((2 * w - 1) / (3 + w))
        assert t1["agreement"] == pytest.approx((1 + w) / (3 + w))
        # t3: both bad by people's two votes, not by the judge's w: still more than half of 2 + w.
        t3 = rows[d.t3.pk, d.r5.id, d.r6.id]
        assert t3["both_bad"] and t3["votes"] == 3
        assert t3["margin"] == pytest.approx((3 + w) / (2 + w))
        # t4, r7 against r8: alice r8, bob r7 (a tie between people), the judge r8: r8 wins on the judge's weight.
        t4 = rows[d.t4.pk, d.r8.id, d.r7.id]
        assert t4["votes"] == 3 and t4["agreement"] == pytest.approx((1 + w) / (2 + w))
        # t5: the imported vote for "Hello!" (+1) outweighs the judge's (−w).
        t5 = rows[d.t5.pk, d.hello.id, d.go_away.id]
        assert t5["margin"] == pytest.approx((1 - w) / (1 + w))

    def test_ratings_are_weighted_means(self, project, data, judge):
        d = data
        judge_answers(d, judge)
        w = measured_agreement(judge)
        rows = {row["response_id"]: row for row in rows_of(export(project, kind="unpaired", votes="both"))}
        r1 = rows[d.r1.id]  # people 5 and 4, the judge 5
        assert (r1["ratings"], r1["score"]) == (3, pytest.approx((9 + 5 * w) / (2 + w)))
        r8 = rows[d.r8.id]  # a person 3, the judge 1 with "off-topic"
        assert r8["score"] == pytest.approx((3 + w) / (1 + w))
        assert {s["label"]: s["share"] for s in r8["label_shares"]}["off-topic"] == pytest.approx(w / (1 + w))

    def test_datasets_loads_the_pairs(self, project, data, judge):
        from datasets import load_dataset

        judge_answers(data, judge)
        snapshot = export(project, votes="both")
        loaded = load_dataset("json", data_files=snapshot.file.path, split="train")
        assert loaded.num_rows == snapshot.row_count > 0
        assert {"prompt", "chosen", "rejected", "margin"} <= set(loaded.column_names)
        assert loaded[0]["chosen"][0]["role"] == "assistant"

    def test_a_judge_without_measured_agreement_is_refused_before_anything_is_saved(self, project, data, judge):
        # Only the imported pair: no task that people and the judge both answered.
        judges.record(judge, Verdict(data.t5.pk, {"choice": "a", "strength": 1, "both_bad": False}))
        assert measured_agreement(judge) is None
        for kind in ("pairs", "unpaired", "sft"):
            with pytest.raises(ValidationError) as refused:
                create_snapshot(project, kind=kind, filters={"votes": "both"})
            assert "Judge critic has no measured agreement with people yet" in refused.value.message_dict["votes"][0]
        assert not project.snapshots.exists()
        # The votes kind lists answers, and Dawid–Skene measures the judge itself: neither needs a weight.
        assert create_snapshot(project, kind="votes", filters={"votes": "both"}).judge_weights is None
        assert create_snapshot(project, kind="pairs", filters={"votes": "both", "aggregation": "dawid-skene"})

    def test_dawid_skene_takes_the_judge_as_a_voter(self, project, data, judge):
        judge_answers(data, judge)
        assert judge.user_id in fit_sides(project, votes="both").voters
        assert judge.user_id not in fit_sides(project).voters
        snapshot = export(project, votes="both", aggregation="dawid-skene")
        assert snapshot.judge_weights is None and snapshot.row_count

    def test_the_weights_are_those_of_when_the_export_was_asked_for(self, project, data, judge):
        judge_answers(data, judge)
        snapshot = create_snapshot(project, kind="pairs", filters={"votes": "both"})
        later = Judge.create(project, "late", kind=Judge.Kind.LLM, endpoint="http://127.0.0.1:9/v1", model_name="x")
        judges.record(later, Verdict(data.t1.pk, {"choice": "a", "strength": 2, "both_bad": False}))
        rows = rows_of(run_snapshot(snapshot))
        # The late judge has no weight on this snapshot: its vote is left out (t1 has people's 3 and the critic's).
        assert [row["votes"] for row in rows if row["task_id"] == data.t1.pk] == [4]


def test_a_round_snapshots_with_the_votes_it_was_launched_with(project, data, judge, base):
    judge_answers(data, judge)
    training_round = launch_round(project, method="dpo", base=base, filters={"votes": "both"})
    assert training_round.filters["votes"] == "both"
    assert training_round.snapshot.judge_weights == {"critic": measured_agreement(judge)}
    rows = rows_of(run_snapshot(training_round.snapshot))
    assert [row["chosen_id"] for row in rows if row["task_id"] == data.t1.pk] == [data.r2.id]  # the judge's side


def test_the_command_takes_the_choice(project, data, judge, tmp_path, capsys):
    judge_answers(data, judge)
    out = tmp_path / "pairs.jsonl"
    call_command("export_dataset", "helpfulness", "--kind", "pairs", "--votes", "judge", "-o", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6
    with pytest.raises(CommandError, match="--votes: Must be one of human, judge, both"):
        call_command("export_dataset", "helpfulness", "--kind", "pairs", "--votes", "all", "-o", str(out))
