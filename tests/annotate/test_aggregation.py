"""Exports decided by Dawid–Skene (aggregation = dawid-skene): reliable voters outweigh spammers, the winner's
probability is the agreement, and the option reaches the command, the API and the forms."""

import json
from io import StringIO

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.aggregation import fit_sides
from annotate.exports import EXPORT_OPTIONS, create_snapshot, run_snapshot
from annotate.models import Annotation, ApiToken, Membership, Prompt, Response, Task, TaskResponse
from annotate.quality import PAIR_LABELS, dawid_skene
from annotate.votes import Tally, decide_by_posterior
from tests.annotate.test_queue import make_task
from training.models import TrainingRound

pytestmark = pytest.mark.django_db

CALIBRATION = 40  # tasks every annotator answers
CONTESTED = 10  # tasks only one careful annotator and the two spammers answer


@pytest.fixture
def crowd(project, django_user_model):
    """Three careful annotators who give the true side (a on even tasks, b on odd ones of the calibration tasks; b on
    every contested one) and two spammers who always say A. On the contested tasks the majority is the spammers'."""
    careful = [django_user_model.objects.create_user(f"careful{i}") for i in range(3)]
    spammers = [django_user_model.objects.create_user(f"spammer{i}") for i in range(2)]
    Membership.objects.bulk_create(Membership(project=project, user=user) for user in careful + spammers)
    n = CALIBRATION + CONTESTED
    prompts = Prompt.objects.bulk_create(
        Prompt(project=project, external_id=f"q{i}", messages=[{"role": "user", "content": f"Q{i}?"}]) for i in range(n)
    )
    responses = Response.objects.bulk_create(
        Response(prompt=prompt, content=f"{side} {prompt.external_id}") for prompt in prompts for side in "ab"
    )
    tasks = Task.objects.bulk_create(
        Task(project=project, prompt=prompt, kind="pairwise", required_annotations=5, status="complete")
        for prompt in prompts
    )
    TaskResponse.objects.bulk_create(
        TaskResponse(task=task, response=responses[2 * i + position], position=position)
        for i, task in enumerate(tasks)
        for position in range(2)
    )
    annotations = []
    for i, task in enumerate(tasks):
        contested = i >= CALIBRATION
        truth = "b" if contested or i % 2 else "a"
        for user in careful[:1] if contested else careful:
            annotations.append(Annotation(task=task, annotator=user, choice=truth, strength=1))
        annotations += [Annotation(task=task, annotator=user, choice="a", strength=1) for user in spammers]
    Annotation.objects.bulk_create(annotations)
    return tasks, careful, spammers


def pairs(project, **filters):
    snapshot = run_snapshot(create_snapshot(project, kind="pairs", filters=filters))
    assert snapshot.status == "ready", snapshot.error
    return {row["task_id"]: row for row in map(json.loads, snapshot.file.open("rb").read().splitlines())}


def chosen_side(row, task):
    return "ab"[task.response_ids().index(row["chosen_id"])]


class TestDawidSkene:
    def test_the_careful_voter_outweighs_two_spammers_where_majority_follows_them(self, project, crowd):
        tasks, _, _ = crowd
        majority, posterior = pairs(project), pairs(project, aggregation="dawid-skene")

        contested = tasks[CALIBRATION:]
        assert {chosen_side(majority[task.pk], task) for task in contested} == {"a"}
        assert {chosen_side(posterior[task.pk], task) for task in contested} == {"b"}
        for task in contested:
            row = posterior[task.pk]
            # The same votes (one for b, two for a) and the mean strength towards b, never below 0.
            assert (row["votes"], row["votes_chosen"], row["votes_rejected"], row["margin"]) == (3, 1, 2, 0.0)
            assert row["agreement"] > 0.95
        # On the calibration tasks both agree, and where the spammers dissent Dawid–Skene is surer than 3 votes of 5.
        for task in tasks[:CALIBRATION]:
            assert chosen_side(posterior[task.pk], task) == chosen_side(majority[task.pk], task)
            if majority[task.pk]["agreement"] < 1:
                assert majority[task.pk]["agreement"] == 0.6 and posterior[task.pk]["agreement"] > 0.99

    def test_the_agreement_is_the_fitted_posterior_of_the_winner(self, project, crowd):
        tasks, careful, spammers = crowd
        voters = {user.pk: w for w, user in enumerate(careful + spammers)}
        rows = Annotation.objects.order_by("task_id", "id").values_list("task_id", "annotator_id", "choice")
        item = {task.pk: i for i, task in enumerate(tasks)}
        labels = np.array([PAIR_LABELS[{"a": 2, "b": 0}[choice]] for _, _, choice in rows])
        fit = dawid_skene(
            np.array([item[task] for task, _, _ in rows]), np.array([voters[user] for _, user, _ in rows]), labels, 3
        )

        exported = pairs(project, aggregation="dawid-skene")

        for task in tasks:
            # The export's E step for one pair with the fit's final parameters, against the fit's last E step.
            assert exported[task.pk]["agreement"] == pytest.approx(fit.posterior[item[task.pk]].max(), abs=1e-4)

    def test_min_agreement_leaves_out_what_the_posterior_is_unsure_of(self, project, crowd):
        tasks, _, spammers = crowd
        # A spammer's vote alone says nothing: always A, whatever the truth.
        alone = pairs(project, aggregation="dawid-skene", annotator=spammers[0].username)
        assert max(row["agreement"] for row in alone.values()) < 0.7
        assert pairs(project, aggregation="dawid-skene", annotator=spammers[0].username, min_agreement=0.7) == {}
        careful = pairs(project, aggregation="dawid-skene", annotator="careful0")
        assert min(row["agreement"] for row in careful.values()) > 0.9
        assert len(pairs(project, aggregation="dawid-skene", annotator="careful0", min_agreement=0.9)) == len(tasks)

    def test_the_fit_reads_neither_gold_tasks_nor_excluded_voters_nor_automatic_ties(self, project, crowd, make_user):
        tasks, careful, spammers = crowd
        gold_only = make_user("gold-only")
        gold = make_task(project, "pairwise", status="gold", required=1)
        Annotation.objects.create(task=gold, source="gold", choice="a")
        Annotation.objects.create(task=gold, annotator=gold_only, choice="b")
        tie = make_task(project, "pairwise", required=1)
        Annotation.objects.create(task=tie, source="auto", choice="tie")
        Membership.objects.filter(user=spammers[1]).update(votes_excluded=True)

        model = fit_sides(project)

        assert set(model.voters) == {user.pk for user in careful + spammers[:1]}

    def test_a_ranking_is_decided_pair_by_pair(self, project, annotator, make_user):
        task = make_task(project, "ranking", required=2)
        r1, r2, r3 = task.response_ids()
        Annotation.objects.create(task=task, annotator=annotator, ranking=[[r2], [r1, r3]])
        other = make_user("other")
        Annotation.objects.create(task=task, annotator=other, ranking=[[r2], [r3], [r1]])
        snapshot = run_snapshot(create_snapshot(project, kind="pairs", filters={"aggregation": "dawid-skene"}))
        rows = [json.loads(line) for line in snapshot.file.open("rb").read().splitlines()]
        # Pairs by position: r2 is above r1 and r3 in both rankings; r1 against r3 is a tie vote and a vote for r3.
        assert [(row["chosen_id"], row["rejected_id"], row["votes_chosen"], row["votes_tie"]) for row in rows] == [
            (r2, r1, 2, 0),
            (r3, r1, 1, 1),
            (r2, r3, 2, 0),
        ]

    def test_a_voter_the_fit_did_not_see_counts_as_the_average_voter(self, project, crowd):
        model = fit_sides(project)
        confusion = np.exp(np.array(model.columns[:-1]))  # [voter, answered l, true k]
        # A vote for A (label 0) by a user id the fit never saw: π_k times the voters' mean P(answer A | truth k).
        expected = np.exp(model.log_prior) * confusion[:, 0, :].mean(axis=0)
        assert model.posterior([(10**9, 1)]) == pytest.approx(tuple(expected / expected.sum()))


def test_decide_by_posterior():
    tally = Tally(total=-1, for_a=1, for_b=2, ties=0, both_bad=2)
    assert decide_by_posterior(tally, 0.7, 0.2, 0.1) == ("a", 0.0, 0.7, True)  # the votes lean to b: margin 0
    assert decide_by_posterior(tally, 0.1, 0.8, 0.1) == ("b", 1 / 3, 0.8, True)
    assert decide_by_posterior(tally, 0.4, 0.4, 0.2) == ("tie", 0.0, 0.2, True)  # a and b equally likely
    assert decide_by_posterior(tally, 0.3, 0.3, 0.4)[0] == "tie"


# The option -------------------------------------------------------------------------------------------------------


class TestOption:
    def test_majority_is_the_default_and_stored_with_the_snapshot(self, project):
        assert EXPORT_OPTIONS["aggregation"].default == "majority"
        assert create_snapshot(project, kind="pairs").filters["aggregation"] == "majority"
        assert create_snapshot(project, kind="sft", filters={"aggregation": "dawid-skene"}).filters["aggregation"] == (
            "dawid-skene"
        )

    @pytest.mark.parametrize(
        ("kind", "value", "message"),
        [
            ("pairs", "median", "Must be one of majority, dawid-skene, not 'median'."),
            ("votes", "dawid-skene", "Applies to pairs and sft exports, not votes."),
            ("unpaired", "dawid-skene", "Applies to pairs and sft exports, not unpaired."),
        ],
    )
    def test_a_wrong_value_or_kind_is_refused_by_name(self, project, kind, value, message):
        with pytest.raises(ValidationError) as refused:
            create_snapshot(project, kind=kind, filters={"aggregation": value})
        assert refused.value.message_dict == {"aggregation": [message]}

    def test_the_command_takes_it(self, project, crowd, tmp_path, capsys):
        out = tmp_path / "pairs.jsonl"
        call_command("export_dataset", project.slug, "--kind", "pairs", "--aggregation", "dawid-skene", "-o", str(out))
        tasks = crowd[0]
        rows = {row["task_id"]: row for row in map(json.loads, out.read_text().splitlines())}
        assert chosen_side(rows[tasks[-1].pk], tasks[-1]) == "b"

    def test_the_api_takes_it(self, project, lead):
        _, token = ApiToken.issue(lead, "script")
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        url = reverse("api:exports", args=[project.slug])
        made = api.post(url, {"kind": "pairs", "filters": {"aggregation": "dawid-skene"}}, format="json")
        assert made.status_code == 202, made.json()
        assert made.json()["filters"]["aggregation"] == "dawid-skene"
        wrong = api.post(url, {"kind": "pairs", "filters": {"aggregation": "mean"}}, format="json")
        assert wrong.status_code == 400 and "aggregation" in wrong.json()["filters"]

    def test_the_export_and_launch_forms_offer_it(self, client, project, lead):
        from annotate.admin import project_leads_group

        lead.groups.add(project_leads_group())
        client.force_login(lead)
        for url in (
            reverse("admin:annotate_project_export", args=[project.pk]),
            reverse("admin:training_traininground_launch"),
        ):
            page = client.get(url).content.decode()
            assert 'name="aggregation"' in page and 'value="dawid-skene"' in page, url

    def test_a_round_launched_with_it_trains_on_pairs_decided_by_it(self, client, project, crowd, lead, base):
        from annotate.admin import project_leads_group

        tasks = crowd[0]
        contested = tasks[-1]
        call_command(
            "launch_round", project.slug, "--method", "dpo", "--base", base, "--filter", "aggregation=dawid-skene",
            stdout=StringIO(),
        )  # fmt: skip
        lead.groups.add(project_leads_group())
        client.force_login(lead)
        form = {"project": project.pk, "method": "dpo", "base": base, "aggregation": "dawid-skene"}
        assert client.post(reverse("admin:training_traininground_launch"), form).status_code == 302
        client.post(reverse("admin:training_traininground_launch"), {**form, "aggregation": ""})

        by_command, by_form, default = TrainingRound.objects.order_by("number")
        assert [r.filters["aggregation"] for r in (by_command, by_form, default)] == [
            "dawid-skene",
            "dawid-skene",
            "majority",
        ]
        for training_round, side in ((by_command, "b"), (by_form, "b"), (default, "a")):
            snapshot = run_snapshot(training_round.snapshot)
            rows = {row["task_id"]: row for row in map(json.loads, snapshot.file.open("rb").read().splitlines())}
            assert chosen_side(rows[contested.pk], contested) == side
