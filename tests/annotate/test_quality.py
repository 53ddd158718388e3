"""Quality measures without gold (position and length bias, speed, Dawid–Skene) on data with known answers."""

import math
from dataclasses import fields
from datetime import timedelta
from fractions import Fraction
from itertools import count

import numpy as np
import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from annotate import quality
from annotate.models import (
    Annotation,
    ApiToken,
    Assignment,
    Membership,
    Project,
    Prompt,
    Response,
    Task,
    TaskResponse,
)
from annotate.quality import Answers, annotator_quality, binomial_test, dawid_skene, read_answers
from annotate.votes import Vote, decide, tally
from models_registry.measures import wilson_interval

_numbers = count()


def exact_binomial_test(k: int, n: int, p: Fraction) -> float:
    """The two-sided exact test in fractions: the outcomes no more likely than k's."""
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    return float(sum(x for x in pmf if x <= pmf[k] * Fraction(10_000_001, 10_000_000)))


class TestBinomialTest:
    def test_known_values(self):
        assert binomial_test(7, 10) == pytest.approx(352 / 1024, rel=1e-12)  # 2·(120 + 45 + 10 + 1) / 2¹⁰
        assert binomial_test(0, 10) == pytest.approx(2 / 1024, rel=1e-12)
        assert binomial_test(5, 10) == 1.0
        assert binomial_test(0, 0) == 1.0

    @pytest.mark.parametrize("p", [Fraction(1, 2), Fraction(1, 3), Fraction(1, 4), Fraction(9, 10)])
    def test_matches_the_exact_test_in_fractions(self, p):
        for n in (1, 7, 20, 61):
            for k in range(n + 1):
                assert binomial_test(k, n, float(p)) == pytest.approx(
                    exact_binomial_test(k, n, p), rel=1e-9, abs=1e-300
                )

    def test_stays_exact_for_large_counts(self):
        # 1,090 of 2,000: z ≈ 4, p ≈ 7e-5; the exact sum in integers.
        tail = sum(math.comb(2_000, i) for i in range(1_090, 2_001))
        assert binomial_test(1_090, 2_000) == pytest.approx(2 * tail / 2**2_000, rel=1e-9)

    def test_a_chance_of_zero_or_one_allows_one_count_only(self):
        assert binomial_test(4, 4, 1.0) == 1.0 and binomial_test(3, 4, 1.0) == 0.0


# Constructed projects ------------------------------------------------------------------------------


@pytest.fixture
def people(project, make_user):
    users = {name: make_user(name) for name in ("ann", "bob", "cat")}
    for user in users.values():
        Membership.objects.create(project=project, user=user)
    return users


def new_task(project, kind, texts):
    prompt = Prompt.objects.create(project=project, external_id=f"p{next(_numbers)}", messages=[])
    task = Task.objects.create(project=project, prompt=prompt, kind=kind)
    responses = [Response.objects.create(prompt=prompt, content=text) for text in texts]
    for position, response in enumerate(responses):
        TaskResponse.objects.create(task=task, response=response, position=position)
    return task, [response.id for response in responses]


def answer(task, user, shown_order=None, seconds=20.0, **fields):
    """A human annotation as a submit stores it: with its lease's shown order and the time the server measured."""
    lease = None
    if shown_order is not None:
        now = timezone.now()
        lease = Assignment.objects.create(
            task=task, annotator=user, leased_at=now, expires_at=now, status="submitted", shown_order=shown_order
        )
    return Annotation.objects.create(
        task=task, annotator=user, assignment=lease, time_spent=timedelta(seconds=seconds), **fields
    )


def pairwise(project, user, *, first_won: bool, show_a_first: bool = True, texts=("short", "a longer one")):
    """A pairwise answer for the response shown first (or the other), shown in either order."""
    task, (a, b) = new_task(project, "pairwise", texts)
    shown = [a, b] if show_a_first else [b, a]
    chose_a = first_won == show_a_first
    return answer(task, user, shown, choice="a" if chose_a else "b", strength=1)


class TestPositionBias:
    def test_share_for_the_first_shown_with_interval_and_test_per_annotator_and_project(self, project, people):
        ann, bob = people["ann"], people["bob"]
        for i in range(10):  # ann: the first shown 9 times of 10, whichever side that was
            pairwise(project, ann, first_won=i < 9, show_a_first=i % 2 == 0)
        for i in range(10):  # bob: 5 of 10
            pairwise(project, bob, first_won=i < 5, show_a_first=i % 3 == 0)
        task, (a, b) = new_task(project, "pairwise", ("x", "y"))
        answer(task, ann, [a, b], choice="tie")  # a tie chooses neither
        task, _ = new_task(project, "pairwise", ("x", "y"))
        answer(task, ann, None, choice="a", strength=1)  # no lease: the order shown is unknown
        task, _ = new_task(project, "pairwise", ("x", "y"))
        Annotation.objects.create(task=task, source="imported", choice="a", strength=1)  # not a person's

        bias = quality.position_bias(read_answers(project))

        first = bias.annotators["ann"]
        assert (first.hits, first.n, first.share, first.chance) == (9, 10, 0.9, 0.5)
        assert (first.low, first.high) == wilson_interval(0.9, 10)
        assert first.p_value == pytest.approx(22 / 1024)  # 2·(10 + 1) / 2¹⁰
        assert (bias.annotators["bob"].hits, bias.annotators["bob"].p_value) == (5, 1.0)
        assert (bias.project.hits, bias.project.n) == (14, 20)
        assert bias.annotators["cat"].share is None  # answered nothing

    def test_rankings_count_the_first_shown_on_top_against_the_chance_of_it(self, project, people):
        ann = people["ann"]
        for top_first in (True, True, True, False):
            task, (a, b, c) = new_task(project, "ranking", ("x", "yy", "zzz"))
            ranking = [[b], [a], [c]] if top_first else [[a], [b], [c]]
            answer(task, ann, [b, c, a], ranking=ranking)
        task, (a, b, c) = new_task(project, "ranking", ("x", "yy", "zzz"))
        answer(task, ann, [c, a, b], ranking=[[a, c], [b]])  # on top, tied with another: chance 2/3

        ranked = quality.ranking_position_bias(read_answers(project)).annotators["ann"]

        assert (ranked.hits, ranked.n) == (4, 5)
        assert ranked.chance == pytest.approx((4 / 3 + 2 / 3) / 5)
        assert ranked.p_value == pytest.approx(exact_binomial_test(4, 5, Fraction(2, 5)))


class TestLengthBias:
    def test_share_of_votes_won_by_the_longer_response(self, project, people):
        ann = people["ann"]
        for i in range(8):  # the longer: 6 of 8 (a is the longer at even i)
            texts = ("a much longer answer", "short") if i % 2 == 0 else ("short", "a much longer answer")
            longer_is_a = i % 2 == 0
            task, (a, b) = new_task(project, "pairwise", texts)
            chose_a = longer_is_a == (i < 6)
            answer(task, ann, [a, b], choice="a" if chose_a else "b", strength=2)
        task, (a, b) = new_task(project, "pairwise", ("same", "size"))
        answer(task, ann, [a, b], choice="a", strength=1)  # equal lengths say nothing
        task, (a, b) = new_task(project, "pairwise", ("x", "longer"))
        answer(task, ann, [a, b], choice="tie")  # nor does a tie
        # A ranking's pairs are votes too: longest first gives 3 for the longer; the tie on x and y no vote.
        task, (x, y, z) = new_task(project, "ranking", ("x", "y", "zzzz"))
        answer(task, ann, [x, y, z], ranking=[[z], [x, y]])

        longer = quality.length_bias(read_answers(project)).annotators["ann"]

        assert (longer.hits, longer.n) == (6 + 2, 8 + 2)
        assert longer.p_value == pytest.approx(binomial_test(8, 10))


class TestSpeed:
    def test_median_seconds_and_share_faster_than_the_floor(self, project, people):
        for seconds in (2, 3, 30, 40, 50):
            pairwise(project, people["ann"], first_won=True, texts=("x", "y"))
            Annotation.objects.filter(pk=Annotation.objects.latest("id").pk).update(
                time_spent=timedelta(seconds=seconds)
            )
        for seconds in (10, 20):
            task, _ = new_task(project, "rating", ("x",))
            answer(task, people["bob"], None, seconds=seconds, score=3)
        task, _ = new_task(project, "rating", ("x",))
        Annotation.objects.create(task=task, annotator=people["bob"], score=4)  # no time measured

        speed = quality.speed(read_answers(project), fast_seconds=5)

        assert speed.annotators["ann"] == quality.Speed(answers=5, median_seconds=30.0, fast=2, fast_share=0.4)
        assert speed.annotators["bob"] == quality.Speed(answers=2, median_seconds=15.0, fast=0, fast_share=0.0)
        assert speed.annotators["cat"] == quality.Speed(0, None, 0, None)
        assert speed.project.median_seconds == 20.0 and speed.project.fast == 2

    def test_the_time_is_the_servers_whatever_the_client_sends(self, project, annotator):
        task, _ = new_task(project, "pairwise", ("x", "y"))
        task.required_annotations = 1
        task.save()
        _, token = ApiToken.issue(annotator, "bot")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        lease = client.post(f"/api/v1/projects/{project.slug}/next/").json()
        Assignment.objects.filter(pk=lease["id"]).update(leased_at=timezone.now() - timedelta(seconds=90))

        reply = client.post(lease["submit_url"], {"preference": "a1", "time_spent": 0.5, "time_spent_seconds": 0.5})

        assert reply.status_code == 200, reply.content
        assert 90 <= reply.json()["time_spent_seconds"] < 100
        assert 90 <= Annotation.objects.get().time_spent.total_seconds() < 100

    def test_a_client_holding_several_leases_is_timed_from_its_previous_answer(self, project, annotator):
        # A bot takes three leases at once, then answers them one after another: the second and third answers were
        # not being worked on while it answered the first, so their time starts at the answer before, not the lease.
        for _ in range(3):
            new_task(project, "pairwise", ("x", "y"))
        elsewhere = Project.objects.create(name="Elsewhere", slug="elsewhere")
        Membership.objects.create(project=elsewhere, user=annotator)
        new_task(elsewhere, "pairwise", ("x", "y"))
        leases = [project.next_assignment(annotator, reuse_lease=False) for _ in range(3)]
        other = elsewhere.next_assignment(annotator)
        now = timezone.now()
        Assignment.objects.filter(pk__in=[lease.pk for lease in leases]).update(leased_at=now - timedelta(seconds=300))
        Assignment.objects.filter(pk=other.pk).update(leased_at=now - timedelta(seconds=300))

        first = leases[0]
        first.refresh_from_db()
        first.submit({"choice": "a", "strength": 1}, user=annotator)
        # Answered in another project meanwhile: that answer does not end this project's waiting time.
        other.refresh_from_db()
        other.submit({"choice": "a", "strength": 1}, user=annotator)
        Assignment.objects.filter(pk=first.pk).update(submitted_at=now - timedelta(seconds=40))
        Assignment.objects.filter(pk=other.pk).update(submitted_at=now - timedelta(seconds=10))
        second = leases[1]
        second.refresh_from_db()
        second.submit({"choice": "b", "strength": 1}, user=annotator)

        spent = dict(Annotation.objects.values_list("task_id", "time_spent"))
        assert 300 <= spent[first.task_id].total_seconds() < 310  # from its lease, as before
        assert 40 <= spent[second.task_id].total_seconds() < 50  # from the answer before it here, not 300 s
        # A skip ends what the annotator was doing too; and the time stays capped by the lease length.
        third = leases[2]
        third.refresh_from_db()
        Assignment.objects.filter(pk=second.pk).update(submitted_at=now - timedelta(seconds=60))
        new_task(project, "pairwise", ("x", "y"))
        skip_lease = project.next_assignment(annotator, reuse_lease=False)
        skip_lease.skip(user=annotator)
        Assignment.objects.filter(pk=skip_lease.pk).update(skipped_at=now - timedelta(seconds=20))
        third.submit({"choice": "a", "strength": 2}, user=annotator)
        assert 20 <= Annotation.objects.get(task=third.task).time_spent.total_seconds() < 30


# Gold and what competence rests on ------------------------------------------------------------------


def gold_task(project, kind, texts, **known):
    """A gold task with its known answer."""
    task, ids = new_task(project, kind, texts)
    Task.objects.filter(pk=task.pk).update(status=Task.Status.GOLD)
    if "ranking" in known:
        known["ranking"] = [[ids[i] for i in group] for group in known["ranking"]]
    Annotation.objects.create(task=task, source=Annotation.Source.GOLD, **known)
    return task, ids


class TestGoldAccuracy:
    def test_answers_to_gold_tasks_are_scored_against_the_known_answer(self, project, people):
        ann, bob = people["ann"], people["bob"]
        task, (a, b) = gold_task(project, "pairwise", ("x", "y"), choice="a", strength=2)
        answer(task, ann, [b, a], choice="a", strength=1)  # the same side, whatever the strength or the order shown
        answer(task, bob, [a, b], choice="tie")
        task, _ = gold_task(project, "pairwise", ("x", "y"), choice="tie")
        answer(task, ann, None, choice="tie", both_bad=True)
        answer(task, bob, None, choice="b", strength=1)
        task, _ = gold_task(project, "rating", ("x",), score=4)
        answer(task, ann, None, score=4)
        answer(task, bob, None, score=5)  # one off is wrong: the gold score is the answer
        task, (x, y, z) = gold_task(project, "ranking", ("x", "y", "z"), ranking=[[1], [0, 2]])
        answer(task, ann, None, ranking=[[y], [z], [x]])  # the same on top
        answer(task, bob, None, ranking=[[y, x], [z]])  # another beside it on top: not the same top
        task, _ = new_task(project, "pairwise", ("x", "y"))  # not gold
        answer(task, bob, None, choice="a", strength=1)
        task, _ = new_task(project, "pairwise", ("x", "y"))
        Task.objects.filter(pk=task.pk).update(status=Task.Status.GOLD)  # no known answer yet: not scored
        answer(task, bob, None, choice="a", strength=1)
        elsewhere = Project.objects.create(name="Other", slug="other")
        task, _ = gold_task(elsewhere, "pairwise", ("x", "y"), choice="a", strength=1)
        answer(task, bob, None, choice="b", strength=1)

        gold = quality.gold_accuracy(project)

        assert (gold.annotators["ann"].hits, gold.annotators["ann"].n) == (4, 4)
        assert (gold.annotators["bob"].hits, gold.annotators["bob"].n) == (0, 4)
        assert (gold.annotators["ann"].low, gold.annotators["ann"].high) == wilson_interval(1.0, 4)
        assert "cat" not in gold.annotators
        assert (gold.project.hits, gold.project.n) == (4, 8)
        measured = {row.username: row for row in annotator_quality(project, fast_seconds=5).annotators}
        assert measured["ann"].gold.share == 1.0 and measured["bob"].gold.share == 0.0
        assert measured["cat"].gold.n == 0 and measured["cat"].gold.share is None


def test_competence_rests_on_answers_to_items_someone_else_answered(project, people):
    ann, bob = people["ann"], people["bob"]
    shared, _ = new_task(project, "pairwise", ("x", "y"))
    answer(shared, ann, None, choice="a", strength=1)
    answer(shared, bob, None, choice="b", strength=1)
    alone, _ = new_task(project, "pairwise", ("x", "y"))
    answer(alone, ann, None, choice="a", strength=1)
    ranked, (x, y, z) = new_task(project, "ranking", ("x", "y", "z"))
    answer(ranked, ann, None, ranking=[[x], [y], [z]])  # three pairs
    answer(ranked, bob, None, ranking=[[z], [y, x]])
    rated, _ = new_task(project, "rating", ("x",))
    answer(rated, bob, None, score=3)

    compared = quality.compared_answers(read_answers(project))

    assert compared.annotators == {"ann": 1 + 3, "bob": 1 + 3, "cat": 0}
    assert compared.project == 8


# Dawid–Skene --------------------------------------------------------------------------------------


def simulate(n_items=1500, good=6, spammers=3, overlap=3, accuracy=0.8, seed=0):
    """Pairwise sides (0 a, 1 b, 2 tie) from workers who answer the truth with `accuracy` (else another side at
    random) and spammers who answer at random; each item answered by `overlap` different workers."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=n_items, p=[0.45, 0.45, 0.1])
    workers = np.concatenate([rng.choice(good + spammers, overlap, replace=False) for _ in range(n_items)])
    items = np.repeat(np.arange(n_items), overlap)
    right = rng.random(len(items)) < accuracy
    labels = np.where(right, truth[items], (truth[items] + rng.integers(1, 3, len(items))) % 3)
    spam = workers >= good
    labels[spam] = rng.integers(0, 3, spam.sum())
    return items, workers, labels, truth


class TestDawidSkene:
    @pytest.mark.parametrize("seed", range(5))
    def test_random_answerers_get_clearly_lower_competence_and_the_posterior_beats_the_majority(self, seed):
        items, workers, labels, truth = simulate(seed=seed)
        fit = dawid_skene(items, workers, labels, 3)

        competence = fit.competence()  # over seeds 0 to 9: the random ones 0.11 at most, the others 0.58 at least
        assert competence[6:].max() < 0.2 < 0.45 < competence[:6].min()
        assert np.allclose(fit.posterior.sum(axis=1), 1)
        # The majority as exports decide it: each side a vote of strength 1 for a or b, 0 for a tie.
        value = {0: 1, 1: -1, 2: 0}
        majority = np.array(
            [
                {"a": 0, "b": 1, "tie": 2}[decide(tally(Vote(value[label]) for label in labels[items == i])).winner]
                for i in range(len(truth))
            ]
        )
        ds_right, majority_right = (fit.posterior.argmax(axis=1) == truth).mean(), (majority == truth).mean()
        assert ds_right >= majority_right

    def test_recovers_rating_scales_and_a_rater_who_always_says_the_same(self):
        rng = np.random.default_rng(1)
        truth = rng.integers(0, 5, 400)
        items = np.repeat(np.arange(400), 3)
        workers = np.concatenate([rng.choice(6, 3, replace=False) for _ in range(400)])
        noise = rng.choice([-1, 0, 0, 0, 0, 0, 1], len(items))  # good raters: mostly right, now and then one off
        labels = np.clip(truth[items] + noise, 0, 4)
        labels[workers == 4] = rng.integers(0, 5, (workers == 4).sum())  # at random
        labels[workers == 5] = 3  # always 3
        competence = dawid_skene(items, workers, labels, 5).competence()
        assert competence[4] < 0.1 and abs(competence[5]) < 0.1 and competence[:4].min() > 0.6

    def test_the_project_measure_fits_pairs_and_ratings_per_annotator(self):
        items, workers, labels, _ = simulate(n_items=300, good=3, spammers=1, seed=3)
        value = np.array([1, -1, 0])[labels]  # Vote.value of each side
        empty = np.array([], dtype=int)
        answers = Answers(
            usernames=["good0", "good1", "good2", "spam", "idle"],
            annotator=workers, kind=np.ones(len(workers), dtype=int), seconds=np.full(len(workers), np.nan),
            first=np.full(len(workers), -1), chance=np.full(len(workers), 0.5),
            vote_annotator=workers, vote_item=items, vote_value=value, vote_longer=np.zeros(len(workers), dtype=int),
            rating_annotator=empty, rating_item=empty, rating_point=empty, rating_points=5,
        )  # fmt: skip
        measured = quality.competence(answers)
        assert measured.annotators["spam"] < 0.2 < 0.45 < min(measured.annotators[f"good{i}"] for i in range(3))
        assert measured.annotators["idle"] is None
        assert 0 < measured.project < 1


# Everything at once ---------------------------------------------------------------------------------


def test_annotator_quality_reads_once_and_gives_every_measure(project, people, monkeypatch):
    ann, bob = people["ann"], people["bob"]
    other = Project.objects.create(name="Other", slug="other")
    for i in range(6):
        task, (a, b) = new_task(project, "pairwise", ("short", "much longer"))
        answer(task, ann, [a, b], seconds=3 + i, choice="a", strength=1)  # always the first shown, the shorter
        answer(task, bob, [b, a], seconds=30, choice="b" if i % 2 else "a", strength=1)
        elsewhere, (a, b) = new_task(other, "pairwise", ("short", "much longer"))  # among this project's task ids
        answer(elsewhere, ann, [b, a], seconds=1, choice="a", strength=1)
    task, _ = new_task(project, "rating", ("x",))
    answer(task, bob, None, seconds=12, score=4)
    monkeypatch.setattr(quality, "CHUNK_TASKS", 2)  # chunk boundaries inside the data

    measured = annotator_quality(project, fast_seconds=5)

    assert [row.username for row in measured.annotators] == ["ann", "bob", "cat"]
    ann_row, bob_row, cat_row = measured.annotators
    assert ann_row.answers == 6 and bob_row.answers == 7 and cat_row.answers == 0
    assert (ann_row.first_position.share, ann_row.longer.share) == (1.0, 0.0)
    assert (ann_row.speed.median_seconds, ann_row.speed.fast_share) == (5.5, 2 / 6)
    assert bob_row.first_position.share == 0.5 and bob_row.speed.median_seconds == 30
    assert cat_row.competence is None and cat_row.first_position.n == 0
    assert measured.project.username is None and measured.project.answers == 13
    assert measured.project.first_position.n == 12
    # Chunks read the same data whatever their size.
    small = read_answers(project)
    monkeypatch.setattr(quality, "CHUNK_TASKS", 5000)
    whole = read_answers(project)
    assert small.usernames == whole.usernames and small.rating_points == whole.rating_points
    for field in fields(Answers):
        if isinstance(column := getattr(small, field.name), np.ndarray):
            assert np.array_equal(column, getattr(whole, field.name), equal_nan=column.dtype.kind == "f"), field.name
