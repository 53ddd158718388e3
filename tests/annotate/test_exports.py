"""Dataset exports: the exact rows of each kind, the aggregation of votes, filters, snapshots, the command and admin."""

import gc
import hashlib
import hmac
import io
import json
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotate import exports
from annotate.admin import project_leads_group
from annotate.exports import EXPORT_OPTIONS, create_snapshot, run_snapshot
from annotate.importing import import_file
from annotate.models import (
    Annotation,
    Assignment,
    DatasetSnapshot,
    Membership,
    Project,
    Prompt,
    Response,
    Task,
    TaskResponse,
)
from annotate.tasks import export_snapshot
from arbiter.celery import app as celery_app
from models_registry.models import ModelVersion


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def day(n: int) -> datetime:
    return datetime(2026, 1, n, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def make_task(project, prompt, kind, responses, round_number=0):
    task = Task.objects.create(project=project, prompt=prompt, kind=kind, round_number=round_number)
    for position, response in enumerate(responses):
        TaskResponse.objects.create(task=task, response=response, position=position)
    return task


def vote(task, annotator, when, **answer):
    annotation = Annotation.objects.create(task=task, annotator=annotator, **answer)
    Annotation.objects.filter(pk=annotation.pk).update(created_at=when)  # auto_now_add ignores a given value
    return annotation


@pytest.fixture
def data(project, django_user_model, tmp_path):
    return build_data(project, django_user_model, tmp_path)


def build_data(project, django_user_model, tmp_path):
    """Four prompts with every case the aggregation has, named as in the tests below.

    p1: pairwise t1 (r1 by model v1, r2) voted A much better, A better, B much better (2 vs 1 on strengths);
        ratings r1 = 5, 4 and r2 = 2; a human-written response r10 in no task.
    p2 (eval, multi-turn): pairwise t2 (r3, r4) one tie vote; pairwise t3 (r5, r6) two votes, both "both bad".
    p3: ranking t4 (r7, r8, r9; round 1) by alice r8 > r7 = r9 and bob r7 > r8 > r9; ratings r7 = 3 and r8 = 3.
    p4: an imported HH-RLHF pair ("Hello!" over "Go away.").
    """
    # No passwords: hashing one takes a good part of a second.
    alice, bob, carol = (django_user_model.objects.create_user(name) for name in ("alice", "bob", "carol"))
    for person in (alice, bob, carol):
        Membership.objects.create(project=project, user=person)
    v1 = ModelVersion.objects.create(project=project, version=1, base_model="tiny")
    p1 = Prompt.objects.create(project=project, external_id="p1", messages=[user("What is 2+2?")])
    p2_messages = [
        {"role": "system", "content": "Be brief."},
        user("Hi"),
        assistant("Hello"),
        user("What is 3+3?"),
    ]
    p2 = Prompt.objects.create(project=project, external_id="p2", messages=p2_messages, split="eval")
    p3 = Prompt.objects.create(project=project, external_id="p3", messages=[user("Name a colour.")])
    r1 = Response.objects.create(prompt=p1, content="4", source="model", model_version=v1)
    r2 = Response.objects.create(prompt=p1, content="5")
    r3, r4, r5, r6 = (Response.objects.create(prompt=p2, content=text) for text in ("6", "Six", "7", "8"))
    r7, r8, r9 = (Response.objects.create(prompt=p3, content=text) for text in ("Red", "Blue", "Table"))
    r10 = Response.objects.create(prompt=p1, content="Four.", source="human")

    t1 = make_task(project, p1, "pairwise", [r1, r2])
    lease = Assignment.objects.create(
        task=t1, annotator=alice, leased_at=day(1), expires_at=day(2), status="submitted", shown_order=[r2.id, r1.id]
    )
    t1_alice = vote(
        t1, alice, day(1), assignment=lease, choice="a", strength=2, time_spent=timedelta(seconds=42), comment="ok"
    )
    t1_bob = vote(t1, bob, day(2), choice="a", strength=1)
    t1_carol = vote(t1, carol, day(3), choice="b", strength=2)
    t2 = make_task(project, p2, "pairwise", [r3, r4])
    t2_alice = vote(t2, alice, day(2), choice="tie")
    t3 = make_task(project, p2, "pairwise", [r5, r6])
    t3_alice = vote(t3, alice, day(2), choice="a", strength=1, both_bad=True)
    t3_bob = vote(t3, bob, day(3), choice="a", strength=2, both_bad=True)
    t4 = make_task(project, p3, "ranking", [r7, r8, r9], round_number=1)
    t4_alice = vote(t4, alice, day(4), ranking=[[r8.id], [r7.id, r9.id]])
    t4_bob = vote(t4, bob, day(5), ranking=[[r7.id], [r8.id], [r9.id]])
    ratings = {}
    for response, scores in ((r1, [5, 4]), (r2, [2]), (r7, [3]), (r8, [3])):
        task = make_task(project, response.prompt, "rating", [response])
        for person, score in zip((alice, bob), scores, strict=False):
            ratings[response.content, person.username] = vote(
                task, person, day(6), score=score, labels=["unsafe"] if score == 2 else []
            )

    hh = tmp_path / "hh.jsonl"
    hh.write_text(
        json.dumps({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."})
        + "\n"
    )
    import_file(project, hh)
    p4 = Prompt.objects.get(messages=[user("Hi")])
    t5 = Task.objects.get(prompt=p4)
    imported = t5.annotations.get()
    Annotation.objects.filter(pk=imported.pk).update(created_at=day(7))
    hello, go_away = Response.objects.get(content="Hello!"), Response.objects.get(content="Go away.")
    return SimpleNamespace(**locals())


def export(project, kind="pairs", format="jsonl", style="conversational", **filters):
    snapshot = run_snapshot(create_snapshot(project, kind=kind, format=format, style=style, filters=filters))
    assert snapshot.status == "ready", snapshot.error
    return snapshot


def rows_of(snapshot) -> list[dict]:
    with snapshot.file.open("rb") as file:
        if snapshot.format == "parquet":
            return pq.read_table(file).to_pylist()
        return [json.loads(line) for line in file.read().decode().splitlines()]


def pair(d, task, chosen, rejected, margin, votes, votes_chosen, votes_rejected, votes_tie, agreement, **flags):
    """An expected pairs row, conversational."""
    return {
        "prompt": chosen.prompt.messages,
        "chosen": [assistant(chosen.content)],
        "rejected": [assistant(rejected.content)],
        "margin": margin,
        "votes": votes,
        "votes_chosen": votes_chosen,
        "votes_rejected": votes_rejected,
        "votes_tie": votes_tie,
        "agreement": agreement,
        "tie": flags.get("tie", False),
        "both_bad": flags.get("both_bad", False),
        "pair_source": flags.get("pair_source", "votes" if task else "ratings"),
        "prompt_id": chosen.prompt.external_id,
        "task_id": task.id if task else None,
        "chosen_id": chosen.id,
        "rejected_id": rejected.id,
        "chosen_model_version": chosen.model_version_id,
        "rejected_model_version": rejected.model_version_id,
    }


class TestPairs:
    def test_default_pairs_aggregate_votes_and_leave_out_ties_and_both_bad(self, project, data):
        d = data
        assert rows_of(export(project)) == [
            # 2 - ... A much better (+2), A better (+1), B much better (-2): sum 1 over 3 votes.
            pair(d, d.t1, d.r1, d.r2, 1 / 3, 3, 2, 1, 0, 2 / 3),
            # The ranking: r7/r8 split 1-1 (a tie, left out); r7 over r9 by bob, alice ties them: 1 of 2 votes.
            pair(d, d.t4, d.r7, d.r9, 0.5, 2, 1, 0, 1, 0.5),
            pair(d, d.t4, d.r8, d.r9, 1.0, 2, 2, 0, 0, 1.0),
            pair(d, d.t5, d.hello, d.go_away, 1.0, 1, 1, 0, 0, 1.0),
        ]

    def test_ties_and_both_bad_are_kept_flagged_on_request(self, project, data):
        d = data
        rows = rows_of(export(project, include_ties=True, include_both_bad=True))
        assert rows == [
            pair(d, d.t1, d.r1, d.r2, 1 / 3, 3, 2, 1, 0, 2 / 3),
            # A tie lists response a as chosen; its agreement is the share of tie votes.
            pair(d, d.t2, d.r3, d.r4, 0.0, 1, 0, 0, 1, 1.0, tie=True),
            pair(d, d.t3, d.r5, d.r6, 1.5, 2, 2, 0, 0, 1.0, both_bad=True),
            pair(d, d.t4, d.r7, d.r8, 0.0, 2, 1, 1, 0, 0.0, tie=True),
            pair(d, d.t4, d.r7, d.r9, 0.5, 2, 1, 0, 1, 0.5),
            pair(d, d.t4, d.r8, d.r9, 1.0, 2, 2, 0, 0, 1.0),
            pair(d, d.t5, d.hello, d.go_away, 1.0, 1, 1, 0, 0, 1.0),
        ]
        only_ties = rows_of(export(project, include_ties=True))
        assert [(row["task_id"], row["tie"]) for row in only_ties if row["tie"] or row["both_bad"]] == [
            (d.t2.id, True),
            (d.t4.id, True),
        ]

    def test_a_minority_flagging_both_bad_keeps_the_pair(self, project, data):
        d = data
        Annotation.objects.filter(pk=d.t3_bob.pk).update(both_bad=False)  # now 1 of 2: not a majority
        rows = rows_of(export(project))
        assert pair(d, d.t3, d.r5, d.r6, 1.5, 2, 2, 0, 0, 1.0) in rows

    def test_ratings_as_pairs_pair_responses_whose_mean_scores_differ(self, project, data):
        d = data
        rows = rows_of(export(project, ratings_as_pairs=True))
        # r1 (4.5) over r2 (2.0), after p1's task pair; r7 and r8 both average 3 and make no pair.
        # The margin is the difference of the means on the votes' scale: 2 * 2.5 / (5 - 1).
        from_ratings = pair(d, None, d.r1, d.r2, 1.25, 3, None, None, None, None)
        assert rows == [
            pair(d, d.t1, d.r1, d.r2, 1 / 3, 3, 2, 1, 0, 2 / 3),
            from_ratings,
            pair(d, d.t4, d.r7, d.r9, 0.5, 2, 1, 0, 1, 0.5),
            pair(d, d.t4, d.r8, d.r9, 1.0, 2, 2, 0, 0, 1.0),
            pair(d, d.t5, d.hello, d.go_away, 1.0, 1, 1, 0, 0, 1.0),
        ]

    def test_margin_is_one_scale_from_0_to_2_for_votes_and_ratings(self, project, data):
        d = data

        def margins(**filters):
            return {(row["task_id"], row["chosen_id"]): row["margin"] for row in rows_of(export(project, **filters))}

        # Votes: the mean strength on the winning side, "better" 1 and "much better" 2 (a ranking's order is 1).
        assert margins(annotator="bob")[d.t1.id, d.r1.id] == 1.0
        assert margins(annotator="alice")[d.t1.id, d.r1.id] == 2.0
        # Ratings: means the whole scale apart are 2 ("much better"), half of it 1.
        Annotation.objects.filter(pk=d.ratings["4", "bob"].pk).update(score=5)
        Annotation.objects.filter(pk=d.ratings["5", "alice"].pk).update(score=1)
        assert margins(ratings_as_pairs=True)[None, d.r1.id] == 2.0  # 5 over 1 on 1-5
        Project.objects.filter(pk=project.pk).update(rating_max=9)
        project.refresh_from_db()
        assert margins(ratings_as_pairs=True)[None, d.r1.id] == 1.0  # 5 over 1 on 1-9

    def test_min_agreement_leaves_out_split_votes_but_not_pairs_from_ratings(self, project, data):
        d = data
        rows = rows_of(export(project, min_agreement=0.7, ratings_as_pairs=True))
        assert [(row["task_id"], row["chosen_id"]) for row in rows] == [
            (None, d.r1.id),
            (d.t4.id, d.r8.id),  # not r7 over r9: alice's ranking ties them, agreement 1/2
            (d.t5.id, d.hello.id),
        ]
        assert [row["task_id"] for row in rows_of(export(project, min_agreement=2 / 3))][0] == d.t1.id

    def test_standard_style_gives_strings(self, project, data):
        d = data
        rows = rows_of(export(project, style="standard", include_ties=True))
        assert rows[0] == {
            **pair(d, d.t1, d.r1, d.r2, 1 / 3, 3, 2, 1, 0, 2 / 3),
            # The prompt ends with the turn the answer takes, so that prompt + chosen (as TRL joins them) reads
            # "…assistant:\n4", not "What is 2+2?4".
            "prompt": "user: What is 2+2?\n\nassistant:\n",
            "chosen": "4",
            "rejected": "5",
        }
        assert (rows[1]["task_id"], rows[1]["prompt"], rows[1]["chosen"], rows[1]["rejected"]) == (
            d.t2.id,
            "system: Be brief.\n\nuser: Hi\n\nassistant: Hello\n\nuser: What is 3+3?\n\nassistant:\n",
            "6",
            "Six",
        )

    def test_each_filter_changes_the_pairs(self, project, data):
        d = data
        by_alice = rows_of(export(project, annotator="alice"))
        # Alice alone: A much better on t1; on the ranking r8 beats r7 and r9 (she ties r7 and r9).
        assert by_alice == [
            pair(d, d.t1, d.r1, d.r2, 2.0, 1, 1, 0, 0, 1.0),
            pair(d, d.t4, d.r8, d.r7, 1.0, 1, 1, 0, 0, 1.0),
            pair(d, d.t4, d.r8, d.r9, 1.0, 1, 1, 0, 0, 1.0),
        ]
        assert [row["task_id"] for row in rows_of(export(project, split="eval", include_ties=True))] == [
            d.t2.id
        ]  # t3 is both bad
        assert {row["task_id"] for row in rows_of(export(project, round=1))} == {d.t4.id}
        # p2 (eval) lies between train prompts: its tasks stay out.
        everything = rows_of(export(project, include_ties=True, include_both_bad=True))
        train = rows_of(export(project, split="train", include_ties=True, include_both_bad=True))
        assert train == [row for row in everything if row["prompt_id"] != "p2"]
        # Votes from 2 January on, before the 3rd: bob's A better on t1.
        assert rows_of(export(project, since="2026-01-02", until="2026-01-03")) == [
            pair(d, d.t1, d.r1, d.r2, 1.0, 1, 1, 0, 0, 1.0)
        ]


class TestUnpaired:
    def test_one_row_per_rated_response_with_the_mean_score(self, project, data):
        d = data

        def row(response, score, ratings, label, unsafe=0.0):
            return {
                "prompt": response.prompt.messages,
                "completion": [assistant(response.content)],
                "label": label,
                "score": score,
                "ratings": ratings,
                "prompt_id": response.prompt.external_id,
                "response_id": response.id,
                "model_version": response.model_version_id,
                "scaled_score": (score - 1) / 4,  # the 1-5 scale on [0, 1]
                # the project's labels in its order, each with the share of the ratings that ticked it
                "label_shares": [
                    {"label": "factual error", "share": 0.0},
                    {"label": "unsafe", "share": unsafe},
                    {"label": "off-topic", "share": 0.0},
                ],
            }

        # The scale is 1-5: above 3 is desirable; exactly 3 (r7, r8) is not.
        assert rows_of(export(project, kind="unpaired")) == [
            row(d.r1, 4.5, 2, True),
            row(d.r2, 2.0, 1, False, unsafe=1.0),
            row(d.r7, 3.0, 1, False),
            row(d.r8, 3.0, 1, False),
        ]
        standard = rows_of(export(project, kind="unpaired", style="standard", annotator="bob"))
        prompt = "user: What is 2+2?\n\nassistant:\n"
        assert standard == [{**row(d.r1, 4.0, 1, True), "prompt": prompt, "completion": "4"}]

    def test_label_shares_count_the_raters_who_ticked_each_label(self, project, data):
        Annotation.objects.filter(pk=data.ratings["4", "bob"].pk).update(labels=["unsafe", "off-topic"])
        (r1,) = [row for row in rows_of(export(project, kind="unpaired")) if row["response_id"] == data.r1.id]
        assert r1["label_shares"] == [
            {"label": "factual error", "share": 0.0},
            {"label": "unsafe", "share": 0.5},  # one of r1's two ratings
            {"label": "off-topic", "share": 0.5},
        ]

    def test_midpoint_of_an_even_scale_is_between_points(self, project, data):
        Project.objects.filter(pk=project.pk).update(rating_min=1, rating_max=4)  # midpoint 2.5
        project.refresh_from_db()
        labels = {row["response_id"]: row["label"] for row in rows_of(export(project, kind="unpaired"))}
        assert labels == {data.r1.id: True, data.r2.id: False, data.r7.id: True, data.r8.id: True}


class TestVotes:
    def test_one_row_per_annotation_with_every_field(self, project, data, settings):
        d = data
        rows = rows_of(export(project, kind="votes"))
        expected_order = [d.t1_alice, d.t1_bob, d.t1_carol, d.ratings["4", "alice"], d.ratings["4", "bob"]]
        expected_order += [d.ratings["5", "alice"], d.t2_alice, d.t3_alice, d.t3_bob, d.t4_alice, d.t4_bob]
        expected_order += [d.ratings["Red", "alice"], d.ratings["Blue", "alice"], d.imported]
        assert [row["annotation_id"] for row in rows] == [a.id for a in expected_order]
        alice = hmac.new(settings.SECRET_KEY.encode(), str(d.alice.id).encode(), "sha256")
        assert rows[0] == {
            "annotation_id": d.t1_alice.id,
            "task_id": d.t1.id,
            "kind": "pairwise",
            "split": "train",
            "round": 0,
            "prompt_id": "p1",
            "prompt": [user("What is 2+2?")],
            "response_ids": [d.r1.id, d.r2.id],
            "responses": ["4", "5"],
            "source": "human",
            "annotator": alice.hexdigest()[:16],
            "score": None,
            "labels": None,
            "choice": "a",  # in task positions: r1; alice was shown r2 first
            "strength": 2,
            "both_bad": False,
            "ranking": None,
            "written": None,
            "comment": "ok",
            "time_spent": 42.0,
            "shown_order": [d.r2.id, d.r1.id],
            "created_at": "2026-01-01T12:00:00+00:00",
        }
        rating = rows[expected_order.index(d.ratings["5", "alice"])]
        assert {key: rating[key] for key in ("kind", "score", "labels", "choice", "strength", "both_bad")} == {
            "kind": "rating",
            "score": 2,
            "labels": ["unsafe"],
            "choice": None,
            "strength": None,
            "both_bad": None,
        }
        ranking = rows[expected_order.index(d.t4_alice)]
        assert (ranking["kind"], ranking["round"], ranking["ranking"], ranking["responses"]) == (
            "ranking",
            1,
            [[d.r8.id], [d.r7.id, d.r9.id]],
            ["Red", "Blue", "Table"],
        )
        assert (ranking["time_spent"], ranking["shown_order"], ranking["comment"]) == (None, None, "")
        imported = rows[-1]
        assert (imported["source"], imported["annotator"], imported["created_at"]) == (
            "imported",
            None,
            "2026-01-07T12:00:00+00:00",
        )
        assert rows[6]["split"] == "eval"

    def test_annotators_are_pseudonyms_stable_across_exports_unless_revealed(self, project, data):
        first = rows_of(export(project, kind="votes"))
        second = rows_of(export(project, kind="votes"))
        names = {row["annotator"] for row in first} - {None}
        assert len(names) == 3 and not names & {"alice", "bob", "carol"}
        assert all(len(name) == 16 and int(name, 16) >= 0 for name in names)
        assert [row["annotator"] for row in first] == [row["annotator"] for row in second]

        revealed = rows_of(export(project, kind="votes", reveal_annotators=True))
        assert [row["annotator"] for row in revealed[:3]] == ["alice", "bob", "carol"]
        pseudonym = {row["annotation_id"]: row["annotator"] for row in first}
        assert len({(pseudonym[row["annotation_id"]], row["annotator"]) for row in revealed}) == 4  # 3 + imported

    def test_filters_select_annotations(self, project, data):
        d = data

        def ids(**filters):
            return {row["annotation_id"] for row in rows_of(export(project, kind="votes", **filters))}

        everything = set(Annotation.objects.values_list("id", flat=True))
        assert ids() == everything
        assert ids(split="eval") == {d.t2_alice.id, d.t3_alice.id, d.t3_bob.id}
        assert ids(split="train") == everything - ids(split="eval")
        assert ids(round=1) == {d.t4_alice.id, d.t4_bob.id}
        assert ids(annotator="carol") == {d.t1_carol.id}
        assert ids(since="2026-01-06") == {a.id for a in d.ratings.values()} | {d.imported.id}
        assert ids(until=day(2)) == {d.t1_alice.id}  # until is exclusive
        assert ids(since="2026-01-02T12:00:00Z", until="2026-01-03") == {d.t1_bob.id, d.t2_alice.id, d.t3_alice.id}


class TestSft:
    def test_preferred_and_human_written_responses_once_each(self, project, data):
        d = data

        def row(response):
            return {
                "messages": [*response.prompt.messages, assistant(response.content)],
                "prompt_id": response.prompt.external_id,
                "response_id": response.id,
                "source": response.source,
                "model_version": response.model_version_id,
            }

        # r8 wins two pairs and r1 wins its task and (with ratings) its rating pair: each appears once.
        expected = [row(d.r1), row(d.r10), row(d.r7), row(d.r8), row(d.hello)]
        assert rows_of(export(project, kind="sft")) == expected
        assert rows_of(export(project, kind="sft", ratings_as_pairs=True)) == expected
        standard = rows_of(export(project, kind="sft", style="standard", split="eval"))
        assert standard == []  # p2's pairs are a tie and a both-bad one
        standard = rows_of(export(project, kind="sft", style="standard"))
        assert standard[1] == {
            "prompt": "user: What is 2+2?\n\nassistant:\n",
            "completion": "Four.",
            "prompt_id": "p1",
            "response_id": d.r10.id,
            "source": "human",
            "model_version": None,
        }

    def test_filters(self, project, data):
        d = data

        def response_ids(**filters):
            return [row["response_id"] for row in rows_of(export(project, kind="sft", **filters))]

        # An annotator filter leaves out human-written responses: they do not record who wrote them.
        assert response_ids(annotator="alice") == [d.r1.id, d.r8.id]
        assert response_ids(round=1) == [d.r7.id, d.r8.id]
        # r7 won over r9 with 1 of 2 votes (alice's ranking ties them): under 0.8, so only r8's win gives p3 one.
        assert response_ids(min_agreement=0.8) == [d.r10.id, d.r8.id, d.hello.id]
        Response.objects.filter(pk=d.r10.pk).update(created_at=day(9))
        assert response_ids(since="2026-01-08") == [d.r10.id]


class TestSnapshots:
    @pytest.mark.parametrize("format", ["jsonl", "parquet"])
    def test_the_same_export_twice_has_the_same_sha256(self, project, data, format):
        first = export(project, format=format, include_ties=True)
        second = export(project, format=format, include_ties=True)
        assert first.pk != second.pk and first.file.name != second.file.name
        assert first.sha256 == second.sha256
        with first.file.open("rb") as file:
            assert hashlib.sha256(file.read()).hexdigest() == first.sha256
        assert (first.row_count, first.rows_written, first.filters["include_ties"]) == (6, 6, True)
        assert first.finished_at is not None and not first.error

    @pytest.mark.parametrize("kind", DatasetSnapshot.Kind.values)
    @pytest.mark.parametrize("style", DatasetSnapshot.Style.values)
    def test_parquet_and_jsonl_hold_the_same_rows_and_an_empty_export_the_same_columns(
        self, project, data, kind, style
    ):
        jsonl = export(project, kind=kind, style=style)
        parquet = export(project, kind=kind, format="parquet", style=style)
        assert rows_of(parquet) == rows_of(jsonl)
        assert list(rows_of(jsonl)[0]) == pq.read_schema(parquet.file.path).names
        empty = export(project, kind=kind, format="parquet", style=style, annotator="carol", split="eval")
        assert (empty.row_count, rows_of(empty)) == (0, [])
        assert pq.read_schema(empty.file.path) == pq.read_schema(parquet.file.path)

    def test_create_stores_every_option_and_writes_nothing(self, project, data, lead):
        snapshot = create_snapshot(
            project, kind="votes", filters={"round": "1", "since": "2026-01-02", "annotator": "bob"}, user=lead
        )
        assert (snapshot.status, snapshot.file.name, snapshot.created_by, snapshot.format) == (
            "pending",
            "",
            lead,
            "jsonl",
        )
        assert snapshot.filters == {
            **{name: option.default for name, option in EXPORT_OPTIONS.items()},
            "round": 1,
            "since": "2026-01-02T00:00:00+00:00",
            "annotator": "bob",
        }

    @pytest.mark.parametrize(
        ("settings_", "field"),
        [
            ({"kind": "ratings"}, "kind"),
            ({"format": "csv"}, "format"),
            ({"style": "chatml"}, "style"),
            ({"filters": ["split"]}, "filters"),
            ({"filters": {"colour": "red"}}, "colour"),
            ({"filters": {"split": "test"}}, "split"),
            ({"filters": {"round": -1}}, "round"),
            ({"filters": {"round": "first"}}, "round"),
            ({"filters": {"round": True}}, "round"),
            ({"filters": {"since": "yesterday"}}, "since"),
            ({"filters": {"until": "2026-02-30"}}, "until"),
            ({"filters": {"since": "2026-01-02", "until": "2026-01-01"}}, "until"),
            ({"filters": {"annotator": "nobody"}}, "annotator"),
            ({"filters": {"min_agreement": 1.5}}, "min_agreement"),
            ({"filters": {"min_agreement": "most"}}, "min_agreement"),
            ({"filters": {"include_ties": "yes"}}, "include_ties"),
            ({"filters": {"reveal_annotators": True}}, "reveal_annotators"),  # pairs have no annotators
            ({"kind": "votes", "filters": {"include_ties": True}}, "include_ties"),
            ({"kind": "sft", "filters": {"include_both_bad": True}}, "include_both_bad"),
            ({"kind": "unpaired", "filters": {"min_agreement": 0.5}}, "min_agreement"),
        ],
    )
    def test_bad_settings_are_refused_naming_the_field(self, project, data, settings_, field):
        with pytest.raises(ValidationError) as error:
            create_snapshot(project, **{"kind": "pairs", **settings_})
        assert list(error.value.message_dict) == [field]
        assert not DatasetSnapshot.objects.exists()

    @pytest.mark.parametrize(("every", "updates"), [(0, 7), (3600, 1)])
    def test_celery_task_records_progress_while_it_runs_and_ends_ready(
        self, project, data, monkeypatch, every, updates
    ):
        monkeypatch.setattr(exports, "CHUNK_SIZE", 2)
        monkeypatch.setattr(exports, "PROGRESS_SECONDS", every)
        snapshot = create_snapshot(project, kind="votes")
        with CaptureQueriesContext(connection) as queries:
            assert export_snapshot(snapshot.pk) == "ready"
        progress = [q["sql"] for q in queries if "rows_written" in q["sql"] and q["sql"].startswith("UPDATE")]
        # 14 rows, 2 at a time: after each written chunk but the last when every one is due, then the final save.
        assert len(progress) == updates
        snapshot.refresh_from_db()
        assert (snapshot.status, snapshot.row_count, snapshot.rows_written) == ("ready", 14, 14)
        assert snapshot.file.name.startswith("exports/") and snapshot.file.name.endswith(".jsonl")
        assert len(rows_of(snapshot)) == 14

    def test_a_snapshot_runs_once(self, project, data):
        snapshot = export(project)
        again = run_snapshot(DatasetSnapshot.objects.get(pk=snapshot.pk))
        assert (again.status, again.file.name, again.sha256) == ("ready", snapshot.file.name, snapshot.sha256)

    def test_a_failure_marks_the_snapshot_failed_with_the_error(self, project, data, settings, tmp_path):
        blocked = tmp_path / "not-a-directory"
        blocked.write_text("")
        settings.MEDIA_ROOT = blocked
        snapshot = create_snapshot(project, kind="pairs")
        assert export_snapshot(snapshot.pk) == "failed"
        snapshot.refresh_from_db()
        assert snapshot.status == "failed" and "Not a directory" in snapshot.error
        assert (snapshot.sha256, snapshot.row_count, snapshot.file.name) == ("", None, "")
        assert snapshot.finished_at is not None

    def test_the_garbage_collector_pauses_only_while_an_export_runs(self, project, data, monkeypatch):
        collecting, rows = [], exports._rows

        def watched_rows(snapshot):
            collecting.append(gc.isenabled())
            yield from rows(snapshot)

        def failing_rows(snapshot):
            collecting.append(gc.isenabled())
            raise RuntimeError("broken")

        monkeypatch.setattr(exports, "_rows", watched_rows)
        export(project)
        assert collecting == [False] and gc.isenabled()
        monkeypatch.setattr(exports, "_rows", failing_rows)
        assert run_snapshot(create_snapshot(project, kind="pairs")).error == "broken"
        assert collecting == [False, False] and gc.isenabled()
        gc.disable()  # whoever turned it off keeps it off
        try:
            monkeypatch.setattr(exports, "_rows", watched_rows)
            export(project)
            assert not gc.isenabled()
        finally:
            gc.enable()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
class TestReadingAhead:
    def test_readers_on_connections_of_their_own_write_the_same_files_and_close_them(
        self, project, django_user_model, tmp_path, monkeypatch
    ):
        build_data(project, django_user_model, tmp_path)
        monkeypatch.setattr(exports, "CHUNK_SIZE", 1)  # a chunk per prompt, so that the readers take turns
        read_ahead, real = [], exports._read_ahead
        monkeypatch.setattr(exports, "_read_ahead", lambda *args: read_ahead.append(1) or real(*args))

        def backends():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND backend_type = 'client backend'"
                )
                return cursor.fetchone()[0]

        before = backends()
        for kind in DatasetSnapshot.Kind.values:
            with transaction.atomic():  # in a transaction, this connection reads it all
                alone = export(project, kind=kind, format="parquet", style="standard")
            assert not read_ahead
            ahead = export(project, kind=kind, format="parquet", style="standard")
            assert read_ahead
            assert (ahead.sha256, ahead.row_count) == (alone.sha256, alone.row_count) and alone.row_count > 0
            read_ahead.clear()
        # A closed connection's server process exits a moment after the client let go: wait for it (up to 5 s).
        deadline = time.monotonic() + 5
        while backends() != before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backends() == before


class TestCommand:
    def test_writes_the_file_and_prints_its_sha256_and_row_count(self, project, data, tmp_path):
        out, path = io.StringIO(), tmp_path / "pairs.parquet"
        call_command(
            "export_dataset", "helpfulness", "--kind", "pairs", "--format", "parquet", "--include-ties",
            "--min-agreement", "0.5", "-o", str(path), stdout=out,
        )  # fmt: skip
        snapshot = DatasetSnapshot.objects.get()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == snapshot.sha256
        # Every pair but t3's (both bad) and t4's r7/r8 tie (agreement 0, under 0.5); t2's tie has agreement 1.
        assert out.getvalue().splitlines()[:2] == [f"sha256 {digest}", "rows 5"]
        assert snapshot.filters["include_ties"] and snapshot.filters["min_agreement"] == 0.5
        assert len(pq.read_table(path)) == 5

    def test_bad_filter_is_a_command_error_naming_the_option(self, project, data, tmp_path):
        with pytest.raises(CommandError, match="--min-agreement: Must be a number from 0 to 1"):
            call_command("export_dataset", "helpfulness", "--kind", "pairs", "--min-agreement", "2", "-o", "x")
        with pytest.raises(CommandError, match="--reveal-annotators: Applies to votes exports, not sft"):
            call_command("export_dataset", "helpfulness", "--kind", "sft", "--reveal-annotators", "-o", "x")
        with pytest.raises(CommandError, match="No project 'nope'"):
            call_command("export_dataset", "nope", "--kind", "pairs", "-o", "x")
        assert not (tmp_path / "x").exists()


@pytest.fixture
def staff_lead(lead):
    lead.groups.add(project_leads_group())
    return lead


class TestAdmin:
    def test_lead_starts_an_export_that_runs_after_commit(
        self, client, staff_lead, project, data, django_capture_on_commit_callbacks, monkeypatch
    ):
        monkeypatch.setattr(celery_app.conf, "task_always_eager", True)
        client.force_login(staff_lead)
        form = {"kind": "pairs", "format": "jsonl", "style": "standard", "include_ties": "on", "round": ""}
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            response = client.post(reverse("admin:annotate_project_export", args=[project.pk]), form)
        assert response.status_code == 302
        snapshot = DatasetSnapshot.objects.get()
        assert len(callbacks) == 1 and snapshot.created_by == staff_lead
        # Eager, the task that the callback queued ran in place.
        snapshot.refresh_from_db()
        assert (snapshot.status, snapshot.style, snapshot.filters["include_ties"]) == ("ready", "standard", True)
        message = str(next(iter(get_messages(response.wsgi_request))))
        assert reverse("admin:annotate_datasetsnapshot_change", args=[snapshot.pk]) in message

        listing = client.get(reverse("admin:annotate_datasetsnapshot_changelist")).content.decode()
        assert snapshot.sha256 in listing
        download = reverse("admin:annotate_datasetsnapshot_download", args=[snapshot.pk])
        assert download in listing
        response = client.get(download)
        assert hashlib.sha256(b"".join(response.streaming_content)).hexdigest() == snapshot.sha256

    def test_bad_filter_shows_on_the_form(self, client, staff_lead, project, data):
        client.force_login(staff_lead)
        form = {"kind": "votes", "format": "jsonl", "style": "standard", "include_ties": "on"}
        response = client.post(reverse("admin:annotate_project_export", args=[project.pk]), form)
        assert response.status_code == 200
        assert response.context["form"].errors == {"include_ties": ["Applies to pairs exports, not votes."]}
        assert not DatasetSnapshot.objects.exists()

    def test_lead_sees_and_downloads_only_snapshots_of_projects_they_lead(
        self, client, staff_lead, project, data, make_user
    ):
        other = Project.objects.create(name="Other", slug="other")
        theirs = export(other, kind="votes")
        mine = export(project, kind="votes")
        client.force_login(staff_lead)
        listing = client.get(reverse("admin:annotate_datasetsnapshot_changelist"))
        assert set(listing.context["cl"].queryset) == {mine}
        assert client.get(reverse("admin:annotate_datasetsnapshot_download", args=[theirs.pk])).status_code == 404
        assert client.get(reverse("admin:annotate_project_export", args=[other.pk])).status_code == 404
        annotator = make_user("someone")
        Membership.objects.create(project=project, user=annotator)
        client.force_login(annotator)
        assert client.get(reverse("admin:annotate_datasetsnapshot_download", args=[mine.pk])).status_code == 302

    def test_the_snapshot_page_has_one_file_link_and_it_downloads(self, client, staff_lead, project, data):
        snapshot = export(project, kind="votes")
        client.force_login(staff_lead)
        page = client.get(reverse("admin:annotate_datasetsnapshot_change", args=[snapshot.pk])).content.decode()
        # Media files are not served: a link to /media/… answers 404.
        assert "/media/" not in page and snapshot.file.name not in page
        download = reverse("admin:annotate_datasetsnapshot_download", args=[snapshot.pk])
        assert page.count(f'href="{download}"') == 1
        response = client.get(download)
        assert hashlib.sha256(b"".join(response.streaming_content)).hexdigest() == snapshot.sha256


def test_responses_and_a_task_added_while_a_chunk_is_read_do_not_break_the_export(data, monkeypatch):
    """An import or a round may add responses and a task over them to a prompt between the chunk's queries."""
    d, fetch, added = data, exports._fetch, []

    def fetch_then_add(sql, params):
        rows = fetch(sql, params)
        # Just after the chunk's first read of its tasks or responses, before the other.
        if ("FROM annotate_task t" in sql or "FROM annotate_response r" in sql) and not added:
            late = [Response.objects.create(prompt=d.p1, content=f"Late {n}") for n in range(2)]
            added.append(make_task(d.project, d.p1, "pairwise", late))
        return rows

    before = rows_of(export(d.project))
    monkeypatch.setattr(exports, "_fetch", fetch_then_add)
    assert rows_of(export(d.project)) == before and added  # the late task was not in the chunk's task list
