"""A simulated campaign with known profiles: the quality flags name the bad annotators and only them.

Twenty bots work pairwise tasks (overlap 3) through the real HTTP API (`simulate_annotators`) by a hidden rule (more
"cat" is better), 30 answers each: four spammers, three that pick the response shown first 90 % of the time, two that
always pick the longer, one that follows the rule but answers at once, and ten careful ones that follow it. Every bot
but the fast one spends a second on each task, so a fault shows only in what it is (a spammer is not caught for being
quick). Twenty of the tasks are gold, made as an import makes them (before anyone answers; the known answer the rule's),
and the project serves gold at rate 1 (every lease is gold while the bot has a gold task left and real work remains): 20
gold answers each (the gold flag needs 10) and 10 others. Then a lead asks for a recompute over the API (the worker's
task runs in-process), and the flags are read from `GET quality/`, as a client reads them. Precision and recall of the
flags over the bad bots are printed and asserted (≥ 0.9 each), and every careful bot must stay unflagged.

Why it does not flake. Which bot gets which task depends on thread timing, so a run cannot be replayed; instead the
sizes make every outcome asserted near certain (rates from the exact binomial):
- A careful bot answers by the rule with no noise: gold accuracy 100 %, competence 0.4–0.7 in the runs seen (with half
  the crowd bad, Dawid-Skene's estimates wander). Only the position test can flag one by chance: the first shown is
  the better half the time (the order shown is drawn at random), and with position_bias_p = 0.001 the exact two-sided
  test flags 30 choices at 25 or more on one side, 3e-4 a bot, one run in 300 for ten (the default 0.01 would flag one
  of ten in about one run in 20).
- A position bot chooses the first shown 95 % of the time (90 % by its bias, half the rest by the rule) and stays
  under 25 of 30 3e-3 of the time; then gold accuracy (55 %) and competence still catch it most of the time.
- Spammers (right 40 % of the time: one of five choices at random) and the length bots (50 %: the padding makes length
  say nothing of which response has more cats, and the lengths never tie) reach 70 % on some 20 gold answers 0.6 % and
  6 % of the time. Competence catches only some of those: with half the crowd bad and three votes a task,
  Dawid-Skene's competence of such bots wandered from -0.4 to 0.6 in eight runs (the careful ones' 0.4 to 0.7), so
  gold does most of the work. A length bot is missed a few times in a hundred; recall >= 0.9 allows one miss in ten,
  and two happen some 1e-3 of the time.
- The fast bot answers every task in well under the one-second floor, the others in more than a second.
The campaign waits some 35 s (30 answers at a second each, the bots in parallel), hence `slow`.
"""

import random

import pytest
from django.core.management import call_command

from annotate import tasks as celery_tasks
from annotate.models import Annotation, Prompt, Response, Task, TaskResponse
from annotate.quality_reports import MIN_POSITION_ANSWERS, MIN_TIMED_ANSWERS

pytestmark = pytest.mark.slow

PROFILES = {"spammer": 4, "position:0.9": 3, "length:1": 2, "fast": 1}
BOTS, ANSWERS, GOLD, THINK = 20, 30, 20, 1.0
TASKS = BOTS * (ANSWERS - GOLD) // 3 + 20  # real ones, with room to spare: no bot runs out of tasks it has not seen
API = "/api/v1/projects/helpfulness/quality/"


def campaign_tasks(project, rng):
    """Pairs whose responses use "cat" a different number of times (the rule never ties), each padded with "dog" to
    a different length drawn apart from the cats, so that length says nothing of which is better; the first GOLD of
    them gold tasks, their known answer the rule's."""
    tasks = []
    for n in range(GOLD + TASKS):
        prompt = Prompt.objects.create(
            project=project, external_id=f"p{n}", messages=[{"role": "user", "content": "?"}]
        )
        status = Task.Status.GOLD if n < GOLD else Task.Status.OPEN
        task = Task.objects.create(
            project=project, prompt=prompt, kind="pairwise", required_annotations=3, status=status
        )
        cats, words = rng.sample(range(4), 2), rng.sample(range(4, 13), 2)
        for position, (count, length) in enumerate(zip(cats, words, strict=True)):
            text = " ".join(["cat"] * count + ["dog"] * (length - count))
            response = Response.objects.create(prompt=prompt, content=text)
            TaskResponse.objects.create(task=task, response=response, position=position)
        if status == Task.Status.GOLD:
            a, b = cats
            Annotation.objects.create(task=task, source=Annotation.Source.GOLD, choice="a" if a > b else "b")
        tasks.append((task, cats))
    return tasks


@pytest.mark.django_db(transaction=True)
def test_a_campaign_flags_exactly_the_bad_annotators(project, lead, client, monkeypatch):
    # No broker here: what recompute enqueues runs at once, in the real task's function.
    monkeypatch.setattr(celery_tasks.refresh_quality, "delay", celery_tasks.refresh_quality)
    project.overlap, project.fast_seconds, project.position_bias_p, project.gold_rate = 3, 1, 0.001, 1
    project.save()
    client.force_login(lead)
    campaign_tasks(project, random.Random(20261204))

    call_command(
        "simulate_annotators",
        project=project.slug,
        users=BOTS,
        rule="word:cat",
        profile=[f"{profile}={n}" for profile, n in PROFILES.items()],
        think=THINK,
        per_user=ANSWERS,
        seconds=300,  # a safety net only: the quota ends the campaign
        seed=7,
        stdout=open("/dev/null", "w"),  # noqa: SIM115 the summary is not what this test reads
    )
    assert client.post(f"{API}recompute/").status_code == 202
    body = client.get(API).json()
    assert body["status"] == "ready", body["error"]

    rows = {row["username"]: row for row in body["annotators"] if row["username"].startswith("sim-")}
    profile = {}
    for kind, n in PROFILES.items():
        profile |= {f"sim-{project.slug}-{len(profile) + i}": kind for i in range(1, n + 1)}
    profile |= {f"sim-{project.slug}-{i}": "careful" for i in range(len(profile) + 1, BOTS + 1)}
    bad = {name for name, kind in profile.items() if kind != "careful"}
    flagged = {name for name, row in rows.items() if row["flags"]}
    precision = len(flagged & bad) / len(flagged) if flagged else 0.0
    recall = len(flagged & bad) / len(bad)
    print(f"\nprecision {precision:.2f}, recall {recall:.2f}")
    for name, kind in profile.items():
        row = rows[name]
        print(
            f"{name:19} {kind:12} answers {row['answers']:3} competence {row['competence']:5.2f} "
            f"gold {row['gold_right']:2}/{row['gold_answers']:2} first shown {row['first_position_share']:.2f} "
            f"longer {row['longer_share']:.2f} fast {row['fast_share']:.2f} {row['flags']}"
        )

    assert all(row["answers"] == ANSWERS for row in rows.values()), "a bot fell short of its quota"
    assert all(row["gold_answers"] == GOLD for row in rows.values()), "gold was not served first, once each"
    assert precision >= 0.9 and recall >= 0.9
    assert not flagged - bad, {name: rows[name]["flags"] for name in flagged - bad}  # no careful bot flagged
    position_found = 0
    for name, kind in profile.items():
        row = rows[name]
        if kind.startswith("position"):
            position_found += "position_bias" in row["flags"]
        elif kind == "fast":
            assert row["flags"] == ["too_fast"], row  # right by the rule, only too quick
        elif kind != "careful":
            assert "too_fast" not in row["flags"], row  # caught by what it answers, not by its speed
        else:
            # Unflagged on their merits: enough answers for the position and speed tests to count.
            assert row["first_position_choices"] >= MIN_POSITION_ANSWERS, row
            assert row["timed_answers"] >= MIN_TIMED_ANSWERS, row
    assert position_found >= PROFILES["position:0.9"] - 1  # one may fall under the test's bar, and gold catch it
