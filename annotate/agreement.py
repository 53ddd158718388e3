"""Inter-annotator agreement: how often people give the same answer to the same item, and whether more than chance.

An item (a "unit") is what two annotators can agree on:

- pairwise task: the task; the value is the side of its vote ("a", "b" or "tie"; strength and "both bad" aside);
- ranking task: each two of its responses, a and b by id; the value is the side the ranking's vote on them takes
  (annotate/votes.py, as the pairs export reads it): "a" ranked above "b", "b" above "a", or "tie" where they
  share a rank;
- rating task: the task; the value is the score.

Only units with two human annotations or more count. For each kind:

- `percent`: of every two annotators' values on one unit, the share that are equal (for ratings, the same score);
- `alpha`: Krippendorff's alpha, 1 − observed / expected disagreement, the expected one from how all the values of
  that kind are spread: 1 is perfect agreement, 0 what chance gives, below 0 systematic disagreement. Nominal for
  pairwise and ranking values, interval (squared differences) for scores. None when every value is the same (no
  disagreement to expect).

Per annotator: of their values on units someone else answered too, compared with each other annotator's value
there, the share that are equal. The lowest first: someone who agrees with others far less than the rest is worth
a look (misread guidelines, or clicking through).
"""

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

from annotate.votes import ranking_votes

Value = Hashable
Metric = Literal["nominal", "interval"]


@dataclass(frozen=True)
class KindAgreement:
    kind: str  # a TaskKind value
    label: str
    units: int  # items with two human annotations or more
    values: int  # the annotations' values on them
    percent: float | None  # share of equal values among every two on one unit
    alpha: float | None  # Krippendorff's alpha; None when there is no disagreement to expect


@dataclass(frozen=True)
class AnnotatorAgreement:
    annotator: str
    agreed: int  # comparisons with another annotator's value on the same unit that were equal
    compared: int

    @property
    def percent(self) -> float:
        return self.agreed / self.compared


def ranking_values(ranking: Sequence[Sequence[int]]) -> dict[tuple[int, int], str]:
    """The value a ranking (groups of response ids, best first) gives each two of its responses (a < b by id)."""
    order = sorted(response_id for group in ranking for response_id in group)
    return {pair: vote.side for pair, vote in ranking_votes(ranking, order).items()}


def percent_agreement(units: Sequence[Sequence[Value]]) -> float | None:
    """Of every two values on one unit (units of one value are left out), the share that are equal."""
    equal = pairs = 0
    for values in units:
        for x, y in combinations(values, 2):
            equal += x == y
            pairs += 1
    return equal / pairs if pairs else None


def krippendorff_alpha(units: Sequence[Sequence[Value]], metric: Metric = "nominal") -> float | None:
    """Krippendorff's alpha over units (each the list of its values; any number of them, missing ones left out).

    Units with fewer than two values cannot be compared and are left out. Nominal: two values differ by 1 or
    not at all; interval: by their squared difference (values are numbers).
    """
    units = [list(values) for values in units if len(values) >= 2]
    n = sum(len(values) for values in units)
    if n < 2:
        return None
    # Observed: within each unit, every ordered pair's difference, weighted 1 / (m - 1) so that each value counts
    # once whatever the size of its unit; expected: the same over all n values regardless of unit.
    observed = sum(_pair_differences(values, metric) / (len(values) - 1) for values in units) / n
    expected = _pair_differences([v for values in units for v in values], metric) / (n * (n - 1))
    if expected == 0:
        return None
    return 1 - observed / expected


def _pair_differences(values: Sequence[Value], metric: Metric) -> float:
    """Σ over ordered pairs i ≠ j of δ²(v_i, v_j), in O(len(values))."""
    m = len(values)
    if metric == "interval":
        total, squares = sum(values), sum(v * v for v in values)  # type: ignore[operator, misc]
        return 2 * m * squares - 2 * total * total
    return m * m - sum(count * count for count in Counter(values).values())


def by_annotator(units: Sequence[Sequence[tuple[str, Value]]]) -> list[AnnotatorAgreement]:
    """Per annotator, over units of (annotator, value): equal values among comparisons with others; lowest first."""
    agreed: Counter[str] = Counter()
    compared: Counter[str] = Counter()
    for answers in units:
        for (first, x), (second, y) in combinations(answers, 2):
            for annotator in (first, second):
                agreed[annotator] += x == y
                compared[annotator] += 1
    rows = [AnnotatorAgreement(name, agreed[name], compared[name]) for name in compared]
    return sorted(rows, key=lambda row: (row.percent, -row.compared, row.annotator))
