"""The vote model: how an answer becomes votes on pairs of responses, how the votes on a pair add up, and how a pair
is decided. Exports, agreement, the models page and the quality measures all read answers through it.

A pair is two responses of one task, a and b, a first in the order the caller gives: the task's positions for
exports, the models page and the quality measures; agreement, which reads no positions, orders them by id.

- A pairwise answer is one vote on its task's pair (positions 0 and 1): +strength for a, −strength for b, 0 for a
  tie (strength 1 "better", 2 "much better"), and both_bad when the annotator said both are bad.
- A ranking (groups of response ids, best first) is a vote on every pair of its task's responses: +1 or −1 for the
  one in the better group, a tie vote (0) where it puts both in one group; never both_bad.
- A tally adds up the votes on one pair: their sum, how many for a, for b and tied, and how many said both bad.
- A weighted vote (a judge's, in an export or a round that takes votes=both: its weight is the judge's measured
  agreement with people, annotate/judge_quality.py, from 0 to 1) counts as that share of one vote everywhere a tally
  reads it: weight × value in the sum, weight (not 1) for a, for b or tied, and weight in both_bad. A decision then
  reads the tally as it reads whole votes, so a judge that agrees with people 60 % of the time moves a pair as much as
  0.6 of a person's vote does, and an export's vote counts (how many answers) stay whole: the weights are in the
  sum, the margin and the agreement only.
- Deciding a pair (majority): the sign of the sum picks the winner, a sum of 0 is a tie. agreement = the share of
  votes on the winning side (for a tie, the share of tie votes); margin = |sum| / votes, the mean strength towards
  the winner, from 0 to 2; the pair is both_bad when more than half of its votes say so.
- Deciding a pair from the probabilities of its true side (Dawid–Skene, annotate/aggregation.py): the most probable
  side wins, and a pair whose a and b are equally probable, or whose tie is the most probable, is a tie;
  agreement = the winner's probability; margin = the votes' mean strength towards the winner, 0 where they lean the
  other way (and for a tie); both_bad as above.
- The score a rating task's answers agree on (the gold answer a majority makes, Task.majority_answer): their
  median, none when the median falls between two points of the scale.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import NamedTuple

SIDES = ("tie", "a", "b")  # by the sign of a vote's value: 0, 1, -1


class Vote(NamedTuple):
    """One vote on a pair (a, b)."""

    value: int  # +strength for a, −strength for b, 0 for a tie
    both_bad: bool = False

    @property
    def side(self) -> str:
        """The side it takes: "a", "b" or "tie"."""
        return SIDES[(self.value > 0) - (self.value < 0)]

    @property
    def strength(self) -> int:
        return abs(self.value)

    @property
    def score(self) -> float:
        """Of a: 1 a won, 0.5 a tie, 0 a lost."""
        return 1.0 if self.value > 0 else 0.0 if self.value < 0 else 0.5


_SIGN = {"a": 1, "b": -1, "tie": 0}
# Every pairwise vote there can be, made once: an export reads millions of answers. both_bad comes as 0 or 1 from
# SQLite, which finds the same entries as False and True.
_PAIRWISE = {
    (choice, strength, both_bad): Vote(sign * (strength or 1), both_bad)
    for choice, sign in _SIGN.items()
    for strength in (None, 1, 2)
    for both_bad in (False, True)
}
_RANKED = {1: Vote(1), 0: Vote(0), -1: Vote(-1)}  # a ranking's votes, by the sign towards a


def pairwise_vote(choice: str, strength: int | None, both_bad: bool) -> Vote:
    """A pairwise answer's vote on its task's pair: choice "a", "b" or "tie"; strength 1 or 2 (None: 1, and a tie's
    is not read)."""
    return _PAIRWISE[choice, strength, both_bad]


def ranking_votes(ranking: Sequence[Sequence[int]], order: Sequence[int]) -> dict[tuple[int, int], Vote]:
    """A ranking's vote on every pair of the responses in `order`, a before b as they come there."""
    pairs = list(combinations(order, 2))
    return dict(zip(pairs, _ranked(ranking, pairs), strict=True))


def _ranked(ranking: Sequence[Sequence[int]], pairs: list[tuple[int, int]]) -> list[Vote]:
    """A ranking's votes on these pairs, in their order."""
    place = {response_id: rank for rank, group in enumerate(ranking) for response_id in group}
    return [_RANKED[(place[a] < place[b]) - (place[a] > place[b])] for a, b in pairs]


@dataclass(slots=True)
class Tally:
    """The votes on one pair."""

    # Whole numbers, but for weighted votes (add_weighted).
    total: float = 0  # the sum of their values
    for_a: float = 0
    for_b: float = 0
    ties: float = 0
    both_bad: float = 0  # votes that said both are bad

    @property
    def votes(self) -> float:
        return self.for_a + self.for_b + self.ties

    def add(self, vote: Vote) -> None:
        value, both_bad = vote
        self.total += value
        self.for_a += value > 0
        self.for_b += value < 0
        self.ties += value == 0
        self.both_bad += both_bad

    def add_weighted(self, vote: Vote, weight: float) -> None:
        """Add a vote that counts as `weight` of one (a judge's)."""
        value, both_bad = vote
        self.total += weight * value
        self.for_a += weight * (value > 0)
        self.for_b += weight * (value < 0)
        self.ties += weight * (value == 0)
        self.both_bad += weight * both_bad


def tally(votes: Iterable[Vote]) -> Tally:
    """The votes on one pair, added up."""
    result = Tally()
    for vote in votes:
        result.add(vote)
    return result


def tally_rankings(rankings: Iterable[Sequence[Sequence[int]]], order: Sequence[int]) -> dict[tuple[int, int], Tally]:
    """Every pair of the responses in `order` (a before b as they come there) with the rankings' votes on it."""
    pairs = list(combinations(order, 2))
    tallies = [Tally() for _ in pairs]
    for ranking in rankings:
        for pair_tally, vote in zip(tallies, _ranked(ranking, pairs), strict=True):
            pair_tally.add(vote)
    return dict(zip(pairs, tallies, strict=True))


class Decision(NamedTuple):
    """What the majority of a pair's votes says."""

    winner: str  # "a", "b", or "tie" where the votes' sum is 0
    margin: float  # |sum| / votes: the mean strength towards the winner, 0 to 2
    agreement: float  # the share of votes on the winning side; for a tie, the share of tie votes
    both_bad: bool  # more than half of the votes said both are bad


def decide(tally: Tally) -> Decision:
    """The majority decision on a pair with one vote or more."""
    n = tally.for_a + tally.for_b + tally.ties
    if tally.total > 0:
        winner, on_winning_side = "a", tally.for_a
    elif tally.total < 0:
        winner, on_winning_side = "b", tally.for_b
    else:
        winner, on_winning_side = "tie", tally.ties
    # tuple.__new__ skips the NamedTuple's own __new__, a Python function: an export decides a million pairs.
    return tuple.__new__(Decision, (winner, abs(tally.total) / n, on_winning_side / n, 2 * tally.both_bad > n))


def decide_by_posterior(tally: Tally, p_a: float, p_b: float, p_tie: float) -> Decision:
    """The decision on a pair with one vote or more, given the probability that its true side is a, b or a tie."""
    n = tally.for_a + tally.for_b + tally.ties
    both_bad = 2 * tally.both_bad > n
    if p_a == p_b or p_tie >= max(p_a, p_b):
        return Decision("tie", 0.0, p_tie, both_bad)
    if p_a > p_b:
        return Decision("a", max(tally.total, 0) / n, p_a, both_bad)
    return Decision("b", max(-tally.total, 0) / n, p_b, both_bad)


def agreed_score(scores: Sequence[int]) -> int | None:
    """The median of a task's ratings, or None where there are none or it falls between two scores."""
    ordered = sorted(scores)
    if not ordered:
        return None
    low, high = ordered[(len(ordered) - 1) // 2], ordered[len(ordered) // 2]
    return low if low == high else None
