"""Inter-annotator agreement: the measures against published and hand-worked values, the project's, the page."""

import re

import pytest
from django.urls import reverse

from annotate import agreement
from annotate.models import Annotation, Membership, Prompt, Response, Task, TaskResponse

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders, 12 units, values
# missing here and there (None); unit 12 has one value and cannot be compared.
_ = None
KRIPPENDORFF_2011 = list(
    zip(
        [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
        [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
        strict=True,
    )
)


def test_alpha_gives_the_published_values():
    units = [[value for value in unit if value is not None] for unit in KRIPPENDORFF_2011]
    assert agreement.krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert agreement.krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)


def test_alpha_is_one_for_perfect_agreement_and_none_without_expected_disagreement():
    assert agreement.krippendorff_alpha([["a", "a"], ["b", "b", "b"]]) == 1.0
    assert agreement.krippendorff_alpha([[3, 3], [3, 3]], "interval") is None  # one value everywhere
    assert agreement.krippendorff_alpha([["a"], ["b"]]) is None  # nothing to compare
    # Every unit split the same way: worse than chance.
    assert agreement.krippendorff_alpha([["a", "b"], ["a", "b"]]) < 0


def test_percent_agreement_counts_every_two_values_of_a_unit():
    assert agreement.percent_agreement([["a", "a", "b"], ["b", "b"], ["a"]]) == 2 / 4
    assert agreement.percent_agreement([["a"]]) is None


def test_a_ranking_gives_each_two_responses_an_order_or_a_tie():
    assert agreement.ranking_values([[8], [9, 7]]) == {(7, 8): "b", (7, 9): "tie", (8, 9): "a"}


def test_per_annotator_lowest_first():
    units = [[("ann", "a"), ("bo", "a"), ("cy", "b")], [("ann", "b"), ("bo", "b")]]
    rows = agreement.by_annotator(units)
    assert [(row.annotator, row.agreed, row.compared) for row in rows] == [
        ("cy", 0, 2),
        ("ann", 2, 3),
        ("bo", 2, 3),
    ]


@pytest.fixture
def people(project, make_user):
    users = [make_user(name) for name in ("alice", "bob", "carol")]
    for user in users:
        Membership.objects.create(project=project, user=user)
    return users


def task(project, kind, n_responses=2):
    prompt = Prompt.objects.create(project=project, external_id=f"p{Prompt.objects.count()}", messages=[])
    task = Task.objects.create(project=project, prompt=prompt, kind=kind, required_annotations=3)
    responses = [Response.objects.create(prompt=prompt, content=f"r{i}") for i in range(n_responses)]
    for position, response in enumerate(responses):
        TaskResponse.objects.create(task=task, response=response, position=position)
    return task, [response.id for response in responses]


def answer(task, answers):
    for user, fields in answers:
        Annotation.objects.create(task=task, annotator=user, **fields)
    task.refresh_progress()


@pytest.mark.django_db
def test_project_agreement_per_kind_and_per_annotator(project, people):
    alice, bob, carol = people
    t1, _ = task(project, "pairwise")
    answer(t1, [(alice, {"choice": "a", "strength": 2}), (bob, {"choice": "a"}), (carol, {"choice": "b"})])
    t2, _ = task(project, "pairwise")
    answer(t2, [(alice, {"choice": "b"}), (bob, {"choice": "b", "both_bad": True})])
    alone, _ = task(project, "pairwise")  # one human answer and an imported one: nothing to compare
    answer(alone, [(alice, {"choice": "a"}), (None, {"choice": "b", "source": "imported"})])
    t4, (r7, r8, r9) = task(project, "ranking", 3)
    answer(t4, [(alice, {"ranking": [[r8], [r7, r9]]}), (bob, {"ranking": [[r7], [r8], [r9]]})])
    t5, _ = task(project, "rating", 1)
    answer(t5, [(alice, {"score": 4}), (bob, {"score": 5})])
    t6, _ = task(project, "rating", 1)
    answer(t6, [(alice, {"score": 2}), (bob, {"score": 2}), (carol, {"score": 1})])

    measured = project.agreement()

    assert measured["tasks"] == 6  # the lone task has two annotations, one of them imported
    by_kind = {row.kind: row for row in measured["by_kind"]}
    # Pairwise: t1 (a, a, b) and t2 (b, b); worked by hand, α = 1 - (2/5) / (12/20).
    pairwise = by_kind["pairwise"]
    assert (pairwise.units, pairwise.values, pairwise.percent) == (2, 5, 2 / 4)
    assert pairwise.alpha == pytest.approx(1 / 3)
    # Ranking: r7/r8 ordered both ways, r7/r9 tied by alice, r8/r9 agreed: α = 1 - (4/6) / (18/30).
    ranking = by_kind["ranking"]
    assert (ranking.units, ranking.values, ranking.percent) == (3, 6, 1 / 3)
    assert ranking.alpha == pytest.approx(-1 / 9)
    # Ratings (interval): t5 (4, 5) and t6 (2, 2, 1): α = 1 - (4/5) / (108/20).
    rating = by_kind["rating"]
    assert (rating.units, rating.values, rating.percent) == (2, 5, 1 / 4)
    assert rating.alpha == pytest.approx(1 - 0.8 / 5.4)
    assert [(row.annotator, row.agreed, row.compared) for row in measured["by_annotator"]] == [
        ("carol", 0, 4),
        ("alice", 4, 9),
        ("bob", 4, 9),
    ]
    # Only the latest tasks count: t6 alone.
    latest = project.agreement(tasks=1)
    assert latest["tasks"] == 1
    assert [(row.units, row.values) for row in latest["by_kind"]] == [(1, 3), (0, 0), (0, 0)]


@pytest.mark.django_db
def test_stats_page_shows_agreement_and_escapes_usernames(client, project, lead, make_user):
    odd = make_user("<b>eve</b>")
    Membership.objects.create(project=project, user=odd)
    pairwise, _ = task(project, "pairwise")
    answer(pairwise, [(odd, {"choice": "a"})])
    client.force_login(lead)
    url = reverse("project_stats", args=[project.slug])
    assert "No task has two annotations yet." in client.get(url).content.decode()
    answer(pairwise, [(lead, {"choice": "a"})])

    response = client.get(url)

    page = response.content.decode()
    assert re.search(r"<td>Side-by-side pairwise</td>\s*<td class=\"num\">1</td>\s*<td class=\"num\">2</td>", page)
    assert re.search(r"<td class=\"num\">100 %</td>\s*<td class=\"num\">–</td>", page)  # one value: no α
    assert "<td>&lt;b&gt;eve&lt;/b&gt;</td>" in page and "<b>eve</b>" not in page


@pytest.mark.django_db
def test_the_api_gives_leads_the_same_agreement(client, project, lead, annotator):
    pairwise, _ = task(project, "pairwise")
    answer(pairwise, [(annotator, {"choice": "a"}), (lead, {"choice": "b"})])
    client.force_login(lead)

    stats = client.get(f"/api/v1/projects/{project.slug}/stats/").json()["lead"]["agreement"]

    assert stats["tasks"] == 1
    assert stats["by_kind"][1] == {"kind": "pairwise", "units": 1, "values": 2, "percent": 0.0, "alpha": 0.0}
    assert [(row["username"], row["agreed"], row["compared"], row["percent"]) for row in stats["by_annotator"]] == [
        ("annotator", 0, 1, 0.0),
        ("lead", 0, 1, 0.0),
    ]
