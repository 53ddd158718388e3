"""Calibration of judges against people: agreement with the human majority, Cohen's κ, position consistency, gold
accuracy and the reliability diagram, per judge and per task kind."""

import random

import numpy as np
import pytest

from annotate.judge_quality import Kappa, cohens_kappa, judge_figures, measured_agreement
from annotate.judges import Verdict, record
from annotate.models import Annotation, ApiToken, Judge, Membership, QualityReport, Task
from annotate.quality_reports import quality_for, refresh_quality_reports, request_quality, run_quality_report
from annotate.simulation import rating_score, rule_preference, rule_ranks, simulate_judge
from tests.annotate.test_simulate_judge import make_tasks

RULE = "word:cat"


@pytest.fixture
def judge(project):
    return Judge.create(project, "sim", kind=Judge.Kind.LLM, endpoint="http://judge.invalid/v1", model_name="sim")


@pytest.fixture
def people(project, make_user):
    users = [make_user(name) for name in ("ann", "bob", "cat")]
    for user in users:
        Membership.objects.create(project=project, user=user)
    return users


def by_rule(task, project):
    """The rule's answer to a task, as Annotation fields."""
    rows = task.task_responses.select_related("response").order_by("position")
    texts = [(row.response_id, row.response.content) for row in rows]
    if task.kind == "pairwise":
        side, strength = rule_preference(texts[0][1], texts[1][1], RULE)
        return {"choice": side, "strength": strength}
    if task.kind == "rating":
        return {"score": rating_score(texts[0][1], RULE, list(range(project.rating_min, project.rating_max + 1)))}
    ranks = rule_ranks(texts, RULE)
    return {"ranking": [[rid for rid, _ in texts if ranks[rid] == r] for r in sorted(set(ranks.values()))]}


def answer_by_rule(project, tasks, users):
    Annotation.objects.bulk_create(
        Annotation(task=task, annotator=user, **by_rule(task, project)) for task in tasks for user in users
    )


def judge_says(judge, task, confidence=None, consistent=None, **answer):
    record(judge, Verdict(task.pk, answer, confidence=confidence, consistent=consistent))


class TestAgreement:
    def test_measured_agreement_falls_within_its_interval_of_the_truth(self, project, people, make_user):
        """A judge right on 80 % by the people's rule: the 95 % interval of its measured agreement holds 0.8 on all
        but a few seeds (at most 2 of 10 misses: 1 chance in 1,000 for a true 95 % interval), and the agreement is
        exactly the share it got right, since the majority is the rule."""
        tasks = make_tasks(project, 150)
        answer_by_rule(project, tasks, people[:1])
        covered = 0
        for seed in range(10):
            judge = Judge.create(project, f"sim{seed}", kind="llm", endpoint="http://j.invalid/v1", model_name="m")
            counts = simulate_judge(judge, tasks, accuracy=0.8, seed=seed, rule=RULE)
            figures = judge_figures(judge)
            assert figures["compared"] == 150
            assert figures["agreement"] == measured_agreement(judge) == counts["right"] / 150
            covered += figures["agreement_low"] <= 0.8 <= figures["agreement_high"]
        assert covered >= 8

    def test_the_majority_is_the_peoples_with_excluded_members_and_judges_aside(self, project, people, judge):
        (task,) = make_tasks(project, 1)
        ann, bob, cat = people
        for user, choice in ((ann, "a"), (bob, "a"), (cat, "b")):
            Annotation.objects.create(task=task, annotator=user, choice=choice, strength=1)
        judge_says(judge, task, choice="b")
        other = Judge.create(project, "other", kind="llm", endpoint="http://j.invalid/v1", model_name="m")
        judge_says(other, task, choice="b")  # a second judge is no voter
        assert measured_agreement(judge) == 0.0
        Membership.objects.filter(user__in=[ann, bob]).update(votes_excluded=True)
        assert measured_agreement(judge) == 1.0

    def test_ratings_compare_to_the_median_and_rankings_pair_by_pair(self, project, people, judge):
        rated, split = make_tasks(project, 2, "rating")
        for user, score in zip(people, (2, 3, 5), strict=True):
            Annotation.objects.create(task=rated, annotator=user, score=score)
        for user, score in zip(people[:2], (2, 3), strict=True):  # median between two points: no majority
            Annotation.objects.create(task=split, annotator=user, score=score)
        judge_says(judge, rated, score=3)
        judge_says(judge, split, score=3)
        (ranked,) = make_tasks(project, 1, "ranking")
        x, y, z = ranked.response_ids()
        Annotation.objects.create(task=ranked, annotator=people[0], ranking=[[x], [y], [z]])
        judge_says(judge, ranked, ranking=[[x], [z], [y]])  # right on x-y and x-z, wrong on y-z
        figures = judge_figures(judge)
        kinds = {row["kind"]: row for row in figures["kinds"]}
        assert (kinds["rating"]["compared"], kinds["rating"]["agreed"]) == (1, 1)
        assert (kinds["ranking"]["compared"], kinds["ranking"]["agreed"]) == (3, 2)
        assert (figures["compared"], figures["agreed"]) == (4, 3)
        assert kinds["rating"]["answers"] == 2 and figures["answers"] == 3


class TestKappa:
    def test_a_hand_computed_case(self):
        judge = list("aaaabbbtab") + ["a"] * 10
        majority = list("aaabbbatab") + ["a"] * 10
        # 20 items, 18 agree (all but the 4th and 7th): p_o = 0.9. The judge says a 15, b 4, tie 1; the majority
        # a 15, b 4, tie 1: p_e = (15·15 + 4·4 + 1·1) / 400 = 242 / 400 = 0.605; κ = (0.9 − 0.605) / 0.395 = 0.7468…
        kappa = cohens_kappa(judge, majority)
        assert kappa.kappa == pytest.approx(0.295 / 0.395)
        assert kappa.low < kappa.kappa < kappa.high

    def test_its_interval_matches_the_bootstraps_spread(self):
        rng = np.random.default_rng(0)
        truth = rng.choice(3, size=400, p=[0.45, 0.45, 0.1])
        noisy = np.where(rng.random(400) < 0.7, truth, rng.choice(3, size=400))
        kappa = cohens_kappa(list(truth), list(noisy))
        resampled = [rng.integers(0, 400, 400) for _ in range(400)]
        spread = np.std([cohens_kappa(list(truth[i]), list(noisy[i])).kappa for i in resampled])
        assert (kappa.high - kappa.low) / (2 * 1.96) == pytest.approx(spread, rel=0.15)

    def test_none_when_both_always_say_the_same_and_no_interval_when_one_does(self):
        assert cohens_kappa(["a"] * 5, ["a"] * 5).kappa is None
        assert cohens_kappa(["a", "b", "b", "tie"], ["tie"] * 4) == Kappa(0.0, None, None, 4)
        assert cohens_kappa(["a", "b"], ["b", "a"]).kappa == -1.0


class TestConsistencyGoldAndReliability:
    def test_position_consistency_counts_every_answer_with_one(self, project, judge):
        counts = simulate_judge(judge, make_tasks(project, 200), accuracy=0.7, seed=1, rule=RULE, inconsistency=0.3)
        figures = judge_figures(judge)
        assert figures["compared"] == 0 and figures["agreement"] is None  # no people yet
        assert figures["consistency_answers"] == 200
        assert figures["consistency_right"] == 200 - counts["inconsistent"]
        assert figures["consistency_low"] <= 0.7 <= figures["consistency_high"]

    def test_gold_accuracy_reads_its_answers_to_tasks_made_gold(self, project, people, judge):
        tasks = [task for task in make_tasks(project, 12) if by_rule(task, project)["choice"] != "tie"][:4]
        answer_by_rule(project, tasks, people)
        for task, right in zip(tasks, (True, True, False, True), strict=True):
            truth = by_rule(task, project)
            wrong = {"a": "b", "b": "a"}[truth["choice"]]
            judge_says(judge, task, choice=truth["choice"] if right else wrong)
            Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETE)
            task.refresh_from_db()
            task.make_gold()
        figures = judge_figures(judge)
        assert (figures["gold_answers"], figures["gold_right"], figures["gold"]) == (4, 3, 0.75)

    def test_a_calibrated_judge_has_a_diagonal_diagram_and_an_overconfident_one_does_not(self, project, people):
        tasks = make_tasks(project, 600)
        answer_by_rule(project, tasks, people[:1])
        judge = Judge.create(project, "calibrated", kind="llm", endpoint="http://j.invalid/v1", model_name="m")
        simulate_judge(judge, tasks, accuracy=0.75, seed=7, rule=RULE)
        figures = judge_figures(judge)
        bins = figures["reliability"]
        assert [row["low"] for row in bins] == [0.5, 0.6, 0.7, 0.8, 0.9]
        assert sum(row["items"] for row in bins) == 600
        assert bins[-1]["agreement"] > bins[0]["agreement"] + 0.2
        assert all(row["agreement_low"] - 0.05 <= row["confidence"] <= row["agreement_high"] + 0.05 for row in bins)
        assert figures["calibration_error"] < 0.06
        Annotation.objects.filter(annotator=judge.user).update(confidence=1.0)
        overconfident = judge_figures(judge)
        assert [row["low"] for row in overconfident["reliability"]] == [0.9]
        assert overconfident["calibration_error"] == pytest.approx(1 - figures["agreement"])


def test_random_judge_agreement_is_near_chance(project, people, judge):
    tasks = make_tasks(project, 120)
    answer_by_rule(project, tasks, people[:1])
    rng = random.Random(3)
    for task in tasks:
        judge_says(judge, task, choice=rng.choice("ab"))
    figures = judge_figures(judge)
    assert figures["kappa_low"] < 0.1 and figures["kappa"] < 0.2


@pytest.fixture
def judged(project, people, judge, enqueued, django_capture_on_commit_callbacks):
    """A refreshed report of a project with 60 pairwise and 20 rating tasks answered by people by the rule and by
    a simulated judge right on 80 % of them; a second judge added since has no figures yet."""
    tasks = make_tasks(project, 60) + make_tasks(project, 20, "rating")
    answer_by_rule(project, tasks, people[:2])
    simulate_judge(judge, tasks, accuracy=0.8, seed=11, rule=RULE, inconsistency=0.2)
    with django_capture_on_commit_callbacks(execute=True):
        request_quality(project)
    report = run_quality_report(QualityReport.objects.get(project=project))
    Judge.create(project, "later", kind="llm", endpoint="http://j.invalid/v1", model_name="m")
    return report


def test_the_report_stores_each_judges_figures_and_lists_every_judge_now(project, judge, judged):
    assert judged.status == "ready"
    (stored,) = judged.figures["judges"]
    assert stored == judge_figures(judge)
    assert [row["kind"] for row in stored["kinds"]] == ["rating", "pairwise"]
    later, sim = quality_for(project)["judges"]
    assert (later["name"], later["answers"], later["agreement"], later["reliability"]) == ("later", 0, None, [])
    assert sim == stored and sim["answers"] == 80 and sim["compared"] > 60


def test_a_judges_answers_queue_a_refresh(project, judge, enqueued):
    (task,) = make_tasks(project, 1)
    judge_says(judge, task, choice="a")
    assert refresh_quality_reports() == 1


def test_the_quality_page_shows_each_judge_with_intervals_and_its_reliability_diagram(client, project, lead, judged):
    client.force_login(lead)
    page = client.get(f"/p/{project.slug}/quality/").content.decode()
    section = page[page.index('id="judges"') : page.index('id="thresholds"')]
    sim = section[section.index('id="judge-sim"') :]
    figures = quality_for(project)["judges"][1]
    assert f"{figures['agreed']} of {figures['compared']} items" in sim
    low, high = round(100 * figures["agreement_low"]), round(100 * figures["agreement_high"])
    assert f"{low}–{high} %" in sim and f"{figures['kappa']:.2f}" in sim
    assert '<th scope="row">Pairwise</th>' in sim and '<th scope="row">Rating</th>' in sim
    assert f"{figures['consistency_right']} of 60" in sim  # ratings have no positions to swap
    assert 'role="img"' in sim and "<title" in sim and sim.count("<circle") == len(figures["reliability"])
    assert "calibration error" in sim
    later = section[section.index('id="judge-later"') : section.index('id="judge-sim"')]
    assert "No answers from this judge" in later


def test_the_quality_api_lists_judges_beside_annotators(client, project, lead, judged):
    _, token = ApiToken.issue(lead, "tests")
    body = client.get(f"/api/v1/projects/{project.slug}/quality/", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert [row["username"] for row in body["annotators"]] == ["ann", "bob", "cat"]
    later, sim = body["judges"]
    assert later["name"] == "later" and later["compared"] == 0 and later["kappa"] is None
    expected = quality_for(project)["judges"][1]
    assert sim["username"] == f"judge.{project.pk}.sim" and sim["judge_kind"] == "llm"
    for name in ("agreement", "agreement_low", "kappa", "kappa_high", "consistency", "calibration_error"):
        assert sim[name] == pytest.approx(expected[name]), name
    assert {row["kind"] for row in sim["kinds"]} == {"pairwise", "rating"}
    assert sim["reliability"][0].keys() >= {"low", "high", "items", "confidence", "agreement", "agreement_low"}


@pytest.mark.django_db(transaction=True)  # the bots' server reads what this test wrote, from its own threads
def test_against_simulated_annotators_working_the_real_api(project, judge):
    """Bots by the rule through the HTTP API make the majority; the simulated judge's agreement is what it got right."""
    from annotate.simulation import simulate_annotators

    tasks = make_tasks(project, 40) + make_tasks(project, 10, "ranking")
    Task.objects.update(required_annotations=2)
    counts = simulate_judge(judge, tasks, accuracy=0.7, seed=5, rule=RULE)
    result = simulate_annotators(project=project, users=2, rule=RULE, noise=0.0, seed=5)
    assert not result.tally.errors and sum(result.tally.answered.values()) == 100  # two each: the judge fills none
    figures = judge_figures(judge)
    kinds = {row["kind"]: row for row in figures["kinds"]}
    assert kinds["pairwise"]["agreed"] == sum(
        a.judge_detail["right"] for a in Annotation.objects.filter(annotator=judge.user, task__kind="pairwise")
    )
    assert kinds["ranking"]["compared"] == 30 and counts["answered"] == 50
    assert figures["agreement_low"] <= 0.7 <= figures["agreement_high"]
