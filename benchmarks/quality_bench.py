"""Quality measures benchmark: annotate/quality.py over a synthetic project of N human annotations, each step timed.

    .venv/bin/python benchmarks/quality_bench.py --annotations 100000             # SQLite, in benchmarks/output/
    .venv/bin/python benchmarks/quality_bench.py --annotations 1000000 --postgres  # a throwaway cluster
    PYTHONPATH=/path/to/crowd-kit .venv/bin/python benchmarks/quality_bench.py --crowd-kit  # crowd-kit's EM too

Generates a project once (kept in benchmarks/output/quality-N.sqlite3 on SQLite): N/3 tasks answered by 3 of 30
simulated annotators each, 80 % pairwise, 10 % rankings of 4 responses, 10 % ratings on 1–5, with the lease's
shown order and a server time. 20 annotators follow a hidden quality of the responses (the better one 80 % of the
time), 4 answer at random, 4 pick the response shown first 85 % of the time, 2 pick the longer one 85 % of the time
and answer in 2 s. Then, in a child process of its own (peak RSS is that child's), reads the answers and runs each
measure, printing the seconds of each, a Markdown row for BENCHMARKS.md and what the measures found per profile.
With --crowd-kit (crowd-kit importable), another child fits crowd-kit's DawidSkene to the same pairwise sides.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import busy_percent, code_version  # noqa: E402
from import_bench import OUTPUT, REPO_ROOT, child_env  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

SEED = 20261204
OVERLAP = 3
PROFILES = ["good"] * 20 + ["random"] * 4 + ["first-shown"] * 4 + ["longer, fast"] * 2


def run_child(args: list[str], database_url: str) -> tuple[dict, float]:
    """Run this script as a child; return the JSON it prints last and its peak RSS in MiB."""
    env = child_env(database_url)
    if os.environ.get("PYTHONPATH"):  # where crowd-kit may be
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    proc = subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, cwd=REPO_ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"benchmark child failed with exit code {os.waitstatus_to_exitcode(status)}")
    return json.loads(out.splitlines()[-1]), usage.ru_maxrss / 1024  # KiB


# Children -----------------------------------------------------------------------------------------


def child_generate(annotations: int) -> None:
    """In the child: the synthetic project, written with bulk_create CHUNK tasks at a time."""
    import django

    django.setup()
    import numpy as np
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from annotate.models import Annotation, Assignment, Project, Prompt, Response, Task, TaskResponse

    rng = np.random.default_rng(SEED)
    start = time.perf_counter()
    project = Project.objects.create(name="Quality benchmark", slug="quality-bench", overlap=OVERLAP)
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"{profile.split(',')[0]}-{i}") for i, profile in enumerate(PROFILES)
    )
    now, chunk = timezone.now(), 10_000
    tasks_total = annotations // OVERLAP
    for offset in range(0, tasks_total, chunk):
        n = min(chunk, tasks_total - offset)
        kinds = rng.choice(["pairwise", "ranking", "rating"], size=n, p=[0.8, 0.1, 0.1])
        prompts = Prompt.objects.bulk_create(
            Prompt(project=project, external_id=f"p{offset + i}", messages=[{"role": "user", "content": "Q?"}])
            for i in range(n)
        )
        sizes = {"pairwise": 2, "ranking": 4, "rating": 1}
        quality, length, responses = [], [], []
        for prompt, kind in zip(prompts, kinds, strict=True):
            for _ in range(sizes[kind]):
                quality.append(rng.normal())
                length.append(int(rng.integers(20, 400)))
                responses.append(Response(prompt=prompt, content="word " * (length[-1] // 5)))
        responses = Response.objects.bulk_create(responses)
        tasks = Task.objects.bulk_create(
            Task(project=project, prompt=prompt, kind=kind, required_annotations=OVERLAP, status="complete")
            for prompt, kind in zip(prompts, kinds, strict=True)
        )
        links, leases, answers, r = [], [], [], 0
        for task, kind in zip(tasks, kinds, strict=True):
            mine = list(range(r, r + sizes[kind]))
            r += sizes[kind]
            for position, index in enumerate(mine):
                links.append(TaskResponse(task=task, response=responses[index], position=position))
            for who in rng.choice(len(users), OVERLAP, replace=False):
                profile = PROFILES[who]
                shown = list(rng.permutation(mine))
                seconds = float(rng.uniform(1, 3) if profile == "longer, fast" else rng.lognormal(3, 0.5))
                leases.append(
                    Assignment(
                        task=task, annotator=users[who], leased_at=now, expires_at=now, status="submitted",
                        shown_order=[responses[i].pk for i in shown],
                    )
                )  # fmt: skip
                fields = _answer(rng, kind, profile, mine, shown, quality, length)
                if "ranking" in fields:
                    fields["ranking"] = [[responses[i].pk for i in group] for group in fields["ranking"]]
                answers.append(
                    Annotation(task=task, annotator=users[who], time_spent=timedelta(seconds=seconds), **fields)
                )
        TaskResponse.objects.bulk_create(links)
        for lease, annotation in zip(Assignment.objects.bulk_create(leases), answers, strict=True):
            annotation.assignment = lease
        Annotation.objects.bulk_create(answers)
        print(f"  {offset + n:,} tasks", file=sys.stderr)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def _answer(
    rng: "np.random.Generator", kind: str, profile: str, mine: list, shown: list, quality: list, length: list
) -> dict:
    """What a simulated annotator of `profile` answers, as Annotation fields (a ranking of response indexes); the
    task's responses are indexes into quality and length, in position order (`mine`) and as shown."""
    if kind == "rating":
        true = int(min(5, max(1, round(3 + quality[mine[0]]))))
        if profile == "random":
            return {"score": int(rng.integers(1, 6))}
        return {"score": int(min(5, max(1, true + rng.choice([-1, 0, 0, 1]))))}

    def better_first(x: int, y: int) -> bool:  # does x come before y for this annotator?
        if profile == "random":
            return bool(rng.random() < 0.5)
        if profile == "first-shown" and rng.random() < 0.85:
            return shown.index(x) < shown.index(y)
        if profile == "longer, fast" and rng.random() < 0.85:
            return length[x] > length[y]
        return (quality[x] > quality[y]) == (rng.random() < 0.8)

    if kind == "pairwise":
        a, b = mine
        if profile == "good" and rng.random() < 0.05:
            return {"choice": "tie"}
        return {"choice": "a" if better_first(a, b) else "b", "strength": int(rng.choice([1, 2]))}
    order = sorted(mine, key=lambda x: sum(better_first(x, y) for y in mine if y != x), reverse=True)
    return {"ranking": [[i] for i in order]}


def child_measure(fast_seconds: float) -> None:
    """In the child: read the answers and run each measure, timed; print the seconds and what they found."""
    import django

    django.setup()
    import numpy as np

    from annotate import quality
    from annotate.models import Project

    project = Project.objects.get(slug="quality-bench")
    seconds = {}
    start = time.perf_counter()
    answers = quality.read_answers(project)
    seconds["read"] = time.perf_counter() - start
    results = {}
    for name, measure in (
        ("position", quality.position_bias),
        ("ranking position", quality.ranking_position_bias),
        ("length", quality.length_bias),
        ("speed", lambda answers: quality.speed(answers, fast_seconds)),
        ("competence", quality.competence),
    ):
        start = time.perf_counter()
        results[name] = measure(answers)
        seconds[name] = time.perf_counter() - start
    counts = {
        "annotations": len(answers.annotator),
        "votes": len(answers.vote_item),
        "ratings": len(answers.rating_item),
    }
    del answers, results  # the peak RSS is then the larger of the steps' and the whole job's, not their sum
    start = time.perf_counter()
    report = quality.annotator_quality(project, fast_seconds=fast_seconds)
    seconds["all"] = time.perf_counter() - start

    found: dict[str, dict[str, list[float]]] = {}
    for row in report.annotators:
        profile = PROFILES[int(row.username.rsplit("-", 1)[1])]
        for name, value in (
            ("competence", row.competence),
            ("first shown", row.first_position.share),
            ("longer", row.longer.share),
            ("fast share", row.speed.fast_share),
        ):
            found.setdefault(profile, {}).setdefault(name, []).append(value)
    summary = {
        profile: {name: round(float(np.mean(values)), 3) for name, values in measures.items()}
        for profile, measures in found.items()
    }
    print(
        json.dumps(
            {
                "seconds": seconds,
                **counts,
                "found": summary,
            }
        )
    )


def child_crowd_kit() -> None:
    """In the child: crowd-kit's DawidSkene on the same pairwise sides, timed (with ours again, for the posteriors)."""
    import django

    django.setup()
    import numpy as np
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    from annotate import quality
    from annotate.models import Project

    answers = quality.read_answers(Project.objects.get(slug="quality-bench"))
    labels = quality.PAIR_LABELS[np.sign(answers.vote_value) + 1]
    frame = pd.DataFrame({"task": answers.vote_item, "worker": answers.vote_annotator, "label": labels})
    start = time.perf_counter()
    ours = quality.dawid_skene(answers.vote_item, answers.vote_annotator, labels, 3)
    mine = time.perf_counter() - start
    # The same number of EM steps for crowd-kit (its own stopping rule, on the evidence bound, stops it much earlier).
    start = time.perf_counter()
    fitted = DawidSkene(n_iter=ours.iterations, tol=-math.inf).fit(frame)  # every step
    crowd_kit = time.perf_counter() - start
    theirs = fitted.probas_.sort_index().reindex(columns=[0, 1, 2], fill_value=0).to_numpy()
    # crowd-kit floors the confusion counts at 1e-10 where ours adds `smoothing`: the same floor, the same model.
    same = quality.dawid_skene(answers.vote_item, answers.vote_annotator, labels, 3, smoothing=1e-10, tolerance=0,
                               iterations=ours.iterations)  # fmt: skip
    print(
        json.dumps(
            {
                "crowd_kit_seconds": crowd_kit,
                "ours_seconds": mine,
                "iterations": ours.iterations,
                "crowd_kit_iterations": len(fitted.loss_history_),
                "items": len(theirs),
                "max_posterior_difference": float(np.abs(theirs - same.posterior).max()),
                "winners_differ": int((theirs.argmax(axis=1) != same.posterior.argmax(axis=1)).sum()),
            }
        )
    )


def child_report() -> None:
    """In the child: the Quality page's refresh as beat runs it over the whole project (its first look reads every
    annotation id; CELERY_TASK_ALWAYS_EAGER runs the refresh it queues in-process), then a look with nothing new."""
    import django

    django.setup()
    from annotate.models import Project, QualityReport
    from annotate.quality_reports import refresh_quality_reports

    project = Project.objects.get(slug="quality-bench")
    QualityReport.objects.filter(project=project).delete()
    start = time.perf_counter()
    queued = refresh_quality_reports()
    refresh = time.perf_counter() - start
    report = QualityReport.objects.get(project=project)
    assert queued == 1 and report.status == "ready", (queued, report.status, report.error)
    start = time.perf_counter()
    assert refresh_quality_reports() == 0
    idle = time.perf_counter() - start
    print(json.dumps({"refresh": refresh, "idle": idle, "annotators": len(report.figures["annotators"])}))


def child_page(requests: int) -> None:
    """In the child: GET the Quality page and the API's quality/ as a lead, `requests` times each after 10 untimed,
    through Django's test client (the whole stack but the socket: middleware, sessions, the template)."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from annotate.models import Membership, Project

    project = Project.objects.get(slug="quality-bench")
    lead, _ = get_user_model().objects.get_or_create(username="bench-lead")
    Membership.objects.get_or_create(project=project, user=lead, defaults={"role": Membership.Role.LEAD})
    annotators = get_user_model().objects.filter(
        username__in=[f"{p.split(',')[0]}-{i}" for i, p in enumerate(PROFILES)]
    )
    Membership.objects.bulk_create(
        [Membership(project=project, user=user) for user in annotators], ignore_conflicts=True
    )  # members, as on a real project: the page shows each one's pause and exclude forms
    client = Client()
    client.force_login(lead)
    result = {}
    for name, path in (("page", "/p/quality-bench/quality/"), ("api", "/api/v1/projects/quality-bench/quality/")):
        for _ in range(10):
            assert client.get(path, secure=True).status_code == 200
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            response = client.get(path, secure=True)
            times.append(time.perf_counter() - start)
            assert response.status_code == 200
        with CaptureQueriesContext(connection) as queries:
            size = len(client.get(path, secure=True).content)
        cuts = statistics.quantiles(times, n=100, method="inclusive")
        result[name] = {"p50": cuts[49], "p95": cuts[94], "max": max(times), "queries": len(queries), "bytes": size}
    print(json.dumps(result))


# Parent -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=int, default=100_000, help="human annotations (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="measuring runs; medians reported (default 3)")
    parser.add_argument("--fast-seconds", type=float, default=4.0, help="the speed floor (default 4)")
    parser.add_argument("--postgres", action="store_true", help="run on a throwaway cluster from tests/postgres.sh")
    parser.add_argument("--crowd-kit", action="store_true", help="also time crowd-kit's DawidSkene")
    parser.add_argument(
        "--page",
        type=int,
        metavar="N",
        help="instead of the measures: the Quality page's refresh, then N requests of "
        "the page and of the API (p50/p95)",
    )
    parser.add_argument("--child-report", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-page", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-generate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-measure", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--child-crowd-kit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_generate:
        return child_generate(args.child_generate)
    if args.child_measure is not None:
        return child_measure(args.child_measure)
    if args.child_crowd_kit:
        return child_crowd_kit()
    if args.child_report:
        return child_report()
    if args.child_page:
        return child_page(args.child_page)
    if args.postgres and "DATABASE_URL" not in os.environ:
        forwarded = [a for a in sys.argv[1:] if a != "--postgres"]
        script = REPO_ROOT / "tests" / "postgres.sh"
        sys.exit(subprocess.run([str(script), sys.executable, __file__, *forwarded]).returncode)

    OUTPUT.mkdir(parents=True, exist_ok=True)
    url = os.environ.get("DATABASE_URL", "")
    if urlsplit(url).scheme.startswith("postg"):
        import psycopg

        admin = psycopg.connect(urlunsplit(urlsplit(url)._replace(path="/postgres")), autocommit=True)
        database = "PostgreSQL " + admin.execute("SHOW server_version").fetchone()[0].split()[0]
        name = f"quality_bench_{args.annotations}"
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            admin.execute(f"CREATE DATABASE {name}")
        db_url = urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    else:
        import sqlite3

        database = f"SQLite {sqlite3.sqlite_version}"
        path = OUTPUT / f"quality-{args.annotations}.sqlite3"
        exists = path.exists()
        db_url = f"sqlite:///{path}"
    if not exists:
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "manage.py"), "migrate", "-v0"],
            env=child_env(db_url),
            check=True,
            cwd=REPO_ROOT,
        )
        print(f"generating {args.annotations:,} annotations …", file=sys.stderr)
        report, _ = run_child(["--child-generate", str(args.annotations)], db_url)
        print(f"generated in {report['seconds']:.0f} s", file=sys.stderr)

    if args.page:
        return page_runs(args, db_url, database)
    runs = []
    for run in range(1, args.runs + 1):
        busy = busy_percent()
        report, peak = run_child(["--child-measure", str(args.fast_seconds)], db_url)
        runs.append((report, peak, busy))
        steps = ", ".join(f"{name} {value:.2f} s" for name, value in report["seconds"].items())
        print(f"run {run}: {steps}; peak RSS {peak:,.0f} MiB (machine {busy:.0f} % busy before)", file=sys.stderr)
    report = runs[0][0]
    print(f"\n{report['annotations']:,} annotations, {report['votes']:,} votes on pairs, {report['ratings']:,} ratings")
    print("What the measures found, mean per profile:")
    for profile, found in report["found"].items():
        print(f"  {profile:>14}: " + ", ".join(f"{name} {value}" for name, value in found.items()))

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    names = list(report["seconds"])
    print(f"\n{database}, medians of {args.runs} runs:")
    print("| Database | Code | Annotations | " + " | ".join(names) + " | Peak RSS | Busy |")
    print("|---|---|---:|" + "---:|" * len(names) + "---:|---:|")
    cells = " | ".join(f"{median([r['seconds'][name] for r, _, _ in runs]):.2f} s" for name in names)
    print(
        f"| {database} | {code_version('annotate/quality.py')} | {args.annotations:,} | {cells}"
        f" | {median([peak for _, peak, _ in runs]):,.0f} MiB | {max(busy for _, _, busy in runs):.0f} % |"
    )
    if args.crowd_kit:
        compared, peak = run_child(["--child-crowd-kit"], db_url)
        print(
            f"\nDawid–Skene on the pairwise sides, {compared['iterations']} EM steps: crowd-kit"
            f" {compared['crowd_kit_seconds']:.2f} s, ours {compared['ours_seconds']:.2f} s. With crowd-kit's floor"
            f" instead of our smoothing, the posteriors differ by {compared['max_posterior_difference']:.1g} at most"
            f" and the winners on {compared['winners_differ']} of {compared['items']:,} items (crowd-kit child's peak"
            f" RSS {peak:,.0f} MiB)"
        )


def page_runs(args: argparse.Namespace, db_url: str, database: str) -> None:
    """The Quality page's side: per run, the refresh (its time and the child's peak RSS), then the requests."""
    os.environ.update(CELERY_TASK_ALWAYS_EAGER="true", ALLOWED_HOSTS="testserver")  # child_env copies os.environ
    runs = []
    for run in range(1, args.runs + 1):
        busy = busy_percent()
        refreshed, peak = run_child(["--child-report"], db_url)
        served, _ = run_child(["--child-page", str(args.page)], db_url)
        runs.append((refreshed, peak, served, busy))
        print(
            f"run {run}: refresh {refreshed['refresh']:.2f} s (peak RSS {peak:,.0f} MiB), idle look"
            f" {1000 * refreshed['idle']:.0f} ms; page p50 {1000 * served['page']['p50']:.1f} ms p95"
            f" {1000 * served['page']['p95']:.1f} ms; API p50 {1000 * served['api']['p50']:.1f} ms p95"
            f" {1000 * served['api']['p95']:.1f} ms (machine {busy:.0f} % busy before)",
            file=sys.stderr,
        )

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    served = runs[0][2]
    print(
        f"\n{database}, {args.annotations:,} annotations, {runs[0][0]['annotators']} annotators, {args.page} requests"
        f" of each a run; the page {served['page']['bytes']:,} bytes in {served['page']['queries']} queries, the API"
        f" {served['api']['bytes']:,} bytes in {served['api']['queries']} queries; medians of {args.runs} runs:"
    )
    header = ["Database", "Code", "Annotations", "Refresh", "Peak RSS", "Idle look", "Page p50", "Page p95", "API p50"]
    print("| " + " | ".join([*header, "API p95", "Busy"]) + " |")
    print("|---|---|" + "---:|" * 9)
    code = code_version("annotate/quality_reports.py", "annotate/views.py", "templates/annotate/quality.html")
    cells = [
        database,
        code,
        f"{args.annotations:,}",
        f"{median([r['refresh'] for r, _, _, _ in runs]):.2f} s",
        f"{median([peak for _, peak, _, _ in runs]):,.0f} MiB",
        f"{1000 * median([r['idle'] for r, _, _, _ in runs]):.0f} ms",
        *(
            f"{1000 * median([s[name][cut] for _, _, s, _ in runs]):.1f} ms"
            for name in ("page", "api")
            for cut in ("p50", "p95")
        ),
        f"{max(busy for *_, busy in runs):.0f} %",
    ]
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
