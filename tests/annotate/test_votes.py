"""The vote model: answers into votes on pairs, tallies, the majority decision; and that its readers agree on it."""

import json
import random
from itertools import combinations

import pytest

from annotate import agreement
from annotate.exports import create_snapshot, run_snapshot
from annotate.models import Annotation, Prompt, Response, Task, TaskResponse
from annotate.votes import (
    Decision,
    Tally,
    Vote,
    decide,
    pairwise_vote,
    ranking_votes,
    tally,
    tally_rankings,
    weighted_tally,
)
from models_registry.measures import cross_version_votes
from models_registry.models import ModelVersion


class TestPairwiseVote:
    @pytest.mark.parametrize(
        ("choice", "strength", "value", "side", "score"),
        [("a", 2, 2, "a", 1.0), ("a", 1, 1, "a", 1.0), ("a", None, 1, "a", 1.0), ("b", 1, -1, "b", 0.0),
         ("b", 2, -2, "b", 0.0), ("tie", None, 0, "tie", 0.5)],
    )  # fmt: skip
    def test_a_choice_is_a_signed_strength_towards_a(self, choice, strength, value, side, score):
        vote = pairwise_vote(choice, strength, False)
        assert (vote.value, vote.side, vote.strength, vote.score, vote.both_bad) == (
            value,
            side,
            abs(value),
            score,
            False,
        )

    def test_both_bad_is_a_bool_whether_the_database_gives_a_bool_or_an_integer(self):
        # SQLite's raw rows hold 0 and 1.
        assert pairwise_vote("b", 2, 1) == Vote(-2, True) and pairwise_vote("b", 2, 1).both_bad is True
        assert pairwise_vote("a", 1, 0).both_bad is False

    def test_a_choice_it_does_not_know_is_refused(self):
        with pytest.raises(KeyError):
            pairwise_vote("c", 1, False)


class TestRankingVotes:
    def test_every_pair_in_the_order_given_the_better_group_wins_and_a_shared_group_ties(self):
        ranking = [[8], [7, 9]]  # 8 best, 7 and 9 tied below it
        assert ranking_votes(ranking, [7, 8, 9]) == {(7, 8): Vote(-1), (7, 9): Vote(0), (8, 9): Vote(1)}
        # The pair's orientation follows the order (positions, for a task); the outcome does not change.
        assert ranking_votes(ranking, [9, 8, 7]) == {(9, 8): Vote(-1), (9, 7): Vote(0), (8, 7): Vote(1)}

    def test_a_ranking_votes_with_strength_one_and_never_says_both_bad(self):
        votes = ranking_votes([[1], [2], [3], [4]], [4, 3, 2, 1])
        assert len(votes) == 6 and {vote for vote in votes.values()} == {Vote(-1, False)}


class TestTally:
    def test_adds_up_sum_sides_ties_and_both_bad(self):
        votes = [pairwise_vote("a", 2, False), pairwise_vote("a", 1, True), pairwise_vote("b", 2, True)]
        votes.append(pairwise_vote("tie", None, False))
        result = tally(votes)
        assert result == Tally(total=1, for_a=2, for_b=1, ties=1, both_bad=2)
        assert result.votes == 4

    def test_rankings_tally_every_pair_as_their_votes_do(self):
        rng = random.Random(3)
        order = [11, 12, 13, 14]
        rankings = []
        for _ in range(20):
            ids = rng.sample(order, 4)
            cut = sorted(rng.sample(range(1, 4), rng.randint(0, 3)))
            rankings.append([ids[i:j] for i, j in zip([0, *cut], [*cut, 4], strict=True)])
        tallies = tally_rankings(rankings, order)
        assert list(tallies) == list(combinations(order, 2))
        for pair, pair_tally in tallies.items():
            assert pair_tally == tally(ranking_votes(ranking, order)[pair] for ranking in rankings)

    def test_a_weighted_vote_counts_as_its_weight_of_one_everywhere(self):
        weighed = Tally()
        for vote in (Vote(1), Vote(1, True)):
            weighed.add(vote)
        weighed.add_weighted(Vote(-2, True), 0.5)  # a judge's "B much better, both bad", at weight 0.5
        assert weighed == Tally(total=1.0, for_a=2, for_b=0.5, ties=0, both_bad=1.5)
        assert weighed.votes == 2.5
        # 1 over 2.5 votes; 2 of 2.5 on A's side; both bad by 1.5 of 2.5.
        assert decide(weighed) == Decision("a", margin=0.4, agreement=0.8, both_bad=True)
        whole = Tally()
        whole.add_weighted(Vote(-1), 1)
        assert whole == tally([Vote(-1)])  # weight 1 is a person's vote

    def test_weights_that_cancel_make_a_tie(self):
        # Two judges of weight 0.1 on either side of a 1-1 split between people: a tie, not A by 8e-17.
        votes = [(Vote(1), 0.1), (Vote(1), 1), (Vote(-1), 1), (Vote(-1), 0.1)]
        assert decide(weighted_tally(votes)).winner == "tie"


class TestDecide:
    def test_the_sign_of_the_sum_picks_the_winner_agreement_is_the_share_on_its_side(self):
        # A much better, A better, B much better: 2 + 1 - 2 = 1 for A, two votes of three on its side.
        decision = decide(tally([Vote(2), Vote(1), Vote(-2)]))
        assert decision == Decision("a", margin=1 / 3, agreement=2 / 3, both_bad=False)
        assert decide(tally([Vote(-1), Vote(0)])) == Decision("b", margin=0.5, agreement=0.5, both_bad=False)

    def test_a_sum_of_zero_is_a_tie_whose_agreement_is_the_share_of_tie_votes(self):
        assert decide(tally([Vote(0)])) == Decision("tie", margin=0.0, agreement=1.0, both_bad=False)
        assert decide(tally([Vote(1), Vote(-1), Vote(0)])) == Decision("tie", 0.0, 1 / 3, False)
        # Strength counts: one "much better" for b outweighs one "better" for a.
        assert decide(tally([Vote(1), Vote(-2)])).winner == "b"

    def test_both_bad_takes_more_than_half_of_the_votes(self):
        assert decide(tally([Vote(1, True), Vote(1, True), Vote(1)])).both_bad
        assert not decide(tally([Vote(1, True), Vote(1)])).both_bad

    def test_margin_runs_from_0_to_2(self):
        assert decide(tally([Vote(2), Vote(2)])).margin == 2
        assert decide(tally([Vote(1), Vote(1)])).margin == 1


def outcome(a: int, b: int, side: str) -> tuple[int, int] | frozenset[int]:
    """(winner, loser), or the two as a set for a tie."""
    return frozenset({a, b}) if side == "tie" else (a, b) if side == "a" else (b, a)


@pytest.mark.django_db
def test_exports_agreement_and_the_models_page_read_a_ranking_alike(project, annotator):
    """Positions in another order than ids, a tie and model versions: each reader sees the same outcome per pair."""
    versions = [ModelVersion.register(project=project, kind="policy", base_model="tiny") for _ in range(4)]
    prompt = Prompt.objects.create(project=project, external_id="p", messages=[{"role": "user", "content": "Hi"}])
    responses = [
        Response.objects.create(prompt=prompt, content=f"r{i}", source="model", model_version=version)
        for i, version in enumerate(versions)
    ]
    task = Task.objects.create(project=project, prompt=prompt, kind="ranking")
    for position, response in zip([2, 0, 3, 1], responses, strict=True):
        TaskResponse.objects.create(task=task, response=response, position=position)
    r0, r1, r2, r3 = (response.id for response in responses)
    ranking = [[r2], [r0, r3], [r1]]
    Annotation.objects.create(task=task, annotator=annotator, ranking=ranking)
    expected = {frozenset({r0, r3}), (r2, r0), (r2, r3), (r2, r1), (r0, r1), (r3, r1)}

    snapshot = run_snapshot(create_snapshot(project, kind="pairs", filters={"include_ties": True}))
    with snapshot.file.open("rb") as file:
        rows = [json.loads(line) for line in file]
    exported = {outcome(row["chosen_id"], row["rejected_id"], "tie" if row["tie"] else "a") for row in rows}
    agreed = {outcome(a, b, side) for (a, b), side in agreement.ranking_values(ranking).items()}
    response_of = {response.model_version_id: response.id for response in responses}
    sides = {1.0: "a", 0.5: "tie", 0.0: "b"}
    measured = {
        outcome(response_of[v.first], response_of[v.second], sides[v.score]) for v in cross_version_votes(project)
    }
    assert exported == agreed == measured == expected
