"""Cross-version votes, round win rates, the Bradley–Terry leaderboard and reward model accuracy."""

import math
import random

import pytest

from annotate.models import Annotation, Task, TaskResponse
from models_registry.measures import (
    REFERENCE,
    Vote,
    cross_version_votes,
    leaderboard,
    reward_accuracies,
    round_win_rates,
    win_rate,
)
from models_registry.models import ModelVersion
from tests.models_registry.conftest import new_prompt, responses_for

pytestmark = pytest.mark.django_db
Z2 = 1.959963984540054**2


def ranking_task(project, annotator, versions, ranking_by_index):
    """A ranking task over one response per entry of `versions`, ranked in groups of indexes into it."""
    prompt = new_prompt(project)
    responses = responses_for(prompt, versions)
    task = Task.objects.create(project=project, prompt=prompt, kind="ranking")
    TaskResponse.objects.bulk_create(TaskResponse(task=task, response=r, position=i) for i, r in enumerate(responses))
    ranking = [[responses[i].pk for i in group] for group in ranking_by_index]
    Annotation.objects.create(task=task, annotator=annotator, ranking=ranking)
    return task


def outcomes(votes):
    """Votes as (winner, loser, tie?) with each pair's entries in a fixed order for ties."""
    seen = []
    for v in votes:
        if v.score == 0.5:
            seen.append((*sorted([v.first, v.second], key=lambda x: x or 0), "tie"))
        else:
            seen.append((v.first, v.second, "win") if v.score == 1 else (v.second, v.first, "win"))
    return sorted(seen, key=str)


class TestWinRate:
    def test_all_wins_is_rate_one_with_upper_bound_one_and_lower_below_one(self, project, policy, add_votes):
        old, new = policy(), policy()
        add_votes([(new, old, "a")] * 10)
        rate = win_rate(project, new, old)
        assert (rate.wins, rate.ties, rate.losses, rate.n, rate.rate, rate.high) == (10, 0, 0, 10, 1.0, 1.0)
        assert rate.low == pytest.approx(10 / (10 + Z2))  # Wilson at p = 1: n / (n + z²) = 0.72

    def test_ties_count_half(self, project, policy, add_votes):
        old, new = policy(), policy()
        add_votes([(new, old, "a"), (new, old, "tie"), (new, old, "tie"), (new, old, "b")])
        rate = win_rate(project, new, old)
        assert (rate.wins, rate.ties, rate.losses, rate.rate) == (1, 2, 1, 0.5)
        assert rate.low < 0.5 < rate.high and rate.low == pytest.approx(1 - rate.high)
        add_votes([(old, new, "b"), (old, new, "b")])
        assert win_rate(project, new, old).rate == pytest.approx((3 + 1) / 6)

    def test_positions_map_to_versions_whichever_way_the_task_stores_them(self, project, policy, add_votes, annotator):
        old, new = policy(), policy()
        add_votes([(new, old, "a"), (old, new, "b")])
        # Rows created in the other order than their positions: position order decides A, not ids.
        prompt = new_prompt(project)
        new_response, old_response = responses_for(prompt, [new, old])
        task = Task.objects.create(project=project, prompt=prompt, kind="pairwise")
        TaskResponse.objects.create(task=task, response=new_response, position=1)
        TaskResponse.objects.create(task=task, response=old_response, position=0)
        Annotation.objects.create(task=task, annotator=annotator, choice="b", strength=2)

        assert (win_rate(project, new, old).wins, win_rate(project, new, old).n) == (3, 3)
        assert win_rate(project, old, new).rate == 0

    def test_no_votes_gives_no_rate(self, project, policy):
        rate = win_rate(project, policy(), policy())
        assert (rate.n, rate.rate, rate.low, rate.high) == (0, None, None, None)


class TestVotes:
    def test_only_human_votes_between_different_entries_count(self, project, policy, add_votes, annotator):
        v1, v2 = policy(), policy()
        add_votes([(v1, v1, "a"), (None, None, "b")])  # one entry each: no comparison
        add_votes([(v1, v2, "a")], source="imported")  # not a human vote
        prompt = new_prompt(project)  # a rating is not a comparison
        task = Task.objects.create(project=project, prompt=prompt, kind="rating")
        TaskResponse.objects.create(task=task, response=responses_for(prompt, [v1])[0], position=0)
        Annotation.objects.create(task=task, annotator=annotator, score=3)
        assert cross_version_votes(project) == []

        add_votes([(None, v1, "b")])
        assert [(v.first, v.second, v.score) for v in cross_version_votes(project)] == [(None, v1.pk, 0.0)]
        assert win_rate(project, v1, None).rate == 1.0  # reference data is an entry of its own

    def test_a_ranking_expands_to_every_pair_of_its_responses(self, project, policy, annotator):
        v1, v2, v3 = policy(), policy(), policy()
        # v2 first; v1 tied with the reference; v3 last
        ranking_task(project, annotator, [v1, v2, v3, None], [[1], [0, 3], [2]])
        expected = [
            (v2.pk, v1.pk, "win"),
            (v2.pk, None, "win"),
            (v2.pk, v3.pk, "win"),
            (None, v1.pk, "tie"),
            (v1.pk, v3.pk, "win"),
            (None, v3.pk, "win"),
        ]
        assert outcomes(cross_version_votes(project)) == sorted(expected, key=str)

    def test_a_ranking_skips_pairs_from_one_version(self, project, policy, annotator):
        v1, v2 = policy(), policy()
        ranking_task(project, annotator, [v1, v2, v1], [[0], [1], [2]])
        assert outcomes(cross_version_votes(project)) == sorted([(v1.pk, v2.pk, "win"), (v2.pk, v1.pk, "win")], key=str)
        assert win_rate(project, v1, v2).rate == 0.5

    def test_a_ranking_whose_responses_share_a_version_is_not_read(self, project, policy, annotator):
        v1 = policy()
        ranking_task(project, annotator, [v1, v1, v1], [[0], [1], [2]])
        assert cross_version_votes(project) == []

    def test_reads_the_votes_in_two_queries(self, project, policy, add_votes, annotator, django_assert_num_queries):
        v1, v2 = policy(), policy()
        add_votes([(v1, v2, "a")] * 5)
        ranking_task(project, annotator, [v1, v2], [[0, 1]])
        with django_assert_num_queries(2):
            assert len(cross_version_votes(project)) == 6


class TestRoundWinRates:
    def test_each_policy_against_its_parent_and_the_one_before(self, project, policy, add_votes):
        v1 = policy()
        v2 = policy(parent=v1)
        v3 = policy(parent=v1)  # trained from v1 again: v2 is its predecessor but not its base
        add_votes([(v2, v1, "a")] * 3 + [(v3, v1, "b"), (v3, v2, "a"), (v2, v3, "tie")])

        rows = round_win_rates(project)
        assert [row.version for row in rows] == [v3, v2]  # v1 has neither base nor predecessor
        newest, second = rows
        assert (newest.parent, newest.against_parent.rate, newest.against_parent.n) == (v1, 0.0, 1)
        assert (newest.previous, newest.against_previous.rate, newest.against_previous.n) == (v2, 0.75, 2)
        assert (second.parent, second.against_parent.rate) == (v1, 1.0)
        assert second.previous is None and second.against_previous is None  # its predecessor is its parent


def synthetic_votes(truth, n, seed):
    """n votes between random pairs of `truth`'s entries, won with Bradley–Terry probability from their Elo."""
    rng = random.Random(seed)
    entries = list(truth)
    votes = []
    for _ in range(n):
        a, b = rng.sample(entries, 2)
        p_a = 1 / (1 + 10 ** ((truth[b] - truth[a]) / 400))
        votes.append((a, b, "a" if rng.random() < p_a else "b"))
    return votes


class TestLeaderboard:
    def test_recovers_the_order_of_three_versions_and_its_intervals_hold_the_truth(self, project, policy, add_votes):
        weak, middle, strong = policy(), policy(), policy()
        truth = {weak: 850, middle: 1000, strong: 1150}  # averaging 1000, like the scores
        add_votes(synthetic_votes(truth, 300, seed=1))

        entries = leaderboard(project)
        assert [entry.version for entry in entries] == [strong, middle, weak]
        assert sum(entry.score for entry in entries) / 3 == pytest.approx(1000)
        for entry in entries:
            assert entry.low < truth[entry.version] < entry.high, entry
            assert entry.low < entry.score < entry.high
        assert sum(entry.games for entry in entries) == 600  # every vote is a game for both sides
        assert entries[0].name == f"policy v{strong.version}"

    def test_bootstrap_is_deterministic_for_a_seed(self, project, policy, add_votes):
        v1, v2, v3 = policy(), policy(), policy()
        add_votes(synthetic_votes({v1: 900, v2: 1000, v3: 1100}, 60, seed=2) + [(v1, v2, "tie")] * 5)
        assert leaderboard(project, seed=7) == leaderboard(project, seed=7)
        assert leaderboard(project, seed=7) != leaderboard(project, seed=8)

    def test_equal_records_score_equal_and_ties_count_half_each_way(self, project, policy, add_votes):
        v1, v2 = policy(), policy()
        add_votes([(v1, v2, "a")] * 3 + [(v2, v1, "a")] * 3)
        assert [entry.score for entry in leaderboard(project)] == pytest.approx([1000, 1000])
        add_votes([(v1, v2, "tie")] * 6)
        assert [entry.score for entry in leaderboard(project)] == pytest.approx([1000, 1000])

    def test_a_version_with_only_wins_stays_finite(self, project, policy, add_votes):
        loser, winner = policy(), policy()
        add_votes([(winner, loser, "a")] * 5)
        top, bottom = leaderboard(project)
        assert (top.version, top.wins, top.games, bottom.wins) == (winner, 5, 5, 0)
        assert all(math.isfinite(x) for x in (top.score, top.low, top.high, bottom.low))
        # The prior pulls a little: 5 wins and half a tie against an opponent at 0 each, 1/2 in all.
        assert 1000 < top.score < 1000 + 400 * math.log10(6 * 6)
        assert top.score + bottom.score == pytest.approx(2000)

    def test_reference_data_is_an_entry(self, project, policy, add_votes):
        v1 = policy()
        add_votes([(v1, None, "a"), (None, v1, "tie")])
        entries = leaderboard(project, bootstrap=20)
        assert [(e.name, e.version, e.wins, e.ties, e.losses) for e in entries] == [
            ("policy v1", v1, 1, 1, 0),
            (REFERENCE, None, 0, 1, 1),
        ]

    def test_no_votes_no_entries(self, project):
        assert leaderboard(project) == []

    def test_takes_votes_it_is_given(self, project, policy):
        v1, v2 = policy(), policy()
        entries = leaderboard(project, votes=[Vote(1, v1.pk, v2.pk, 1.0), Vote(2, v2.pk, v1.pk, 0.0)], bootstrap=10)
        assert [entry.version for entry in entries] == [v1, v2]


class TestRewardAccuracy:
    def test_reads_each_reward_models_report_newest_first(self, project):
        first = ModelVersion.register(
            project=project, kind="reward", base_model="tiny", eval_report={"accuracy": 0.8, "eval_pairs": 40}
        )
        second = ModelVersion.register(
            project=project,
            kind="reward",
            base_model="tiny",
            eval_report={"accuracy": 0.9, "human_eval_accuracy": 0.85, "eval_pairs": 50},
        )
        rows = reward_accuracies(project)
        assert [(r.version, r.accuracy, r.human_eval_accuracy, r.eval_pairs) for r in rows] == [
            (second, 0.9, 0.85, 50),
            (first, 0.8, None, 40),
        ]
        assert [row.rating_spearman for row in rows] == [None, None]

    def test_a_model_trained_on_ratings_brings_its_rank_correlation(self, project):
        report = {"rating_spearman": 0.71, "rating_pair_accuracy": 0.9, "eval_ratings": 24}
        ModelVersion.register(project=project, kind="reward", base_model="tiny", eval_report=report)
        (row,) = reward_accuracies(project)
        assert (row.rating_spearman, row.accuracy, row.eval_pairs) == (0.71, None, None)
