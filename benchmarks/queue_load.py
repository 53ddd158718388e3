"""Annotation queue under load: a real gunicorn server over N open tasks, one annotator, then a crowd of them.

    .venv/bin/python benchmarks/queue_load.py --postgres                # throwaway tests/postgres.sh cluster
    DATABASE_URL=postgres://… .venv/bin/python benchmarks/queue_load.py  # a PostgreSQL you run (templates kept)

For each size (1k, 100k, 1M tasks by default) a template database is filled once (set-based SQL, then
VACUUM ANALYZE) and each run gets a copy of it, its project set to fill in breadth (the default) or in depth
(--fill depth). A run times, in order: the queue functions in a child process
(Project.next_assignment, progress_for, Assignment.submit: no HTTP); one client against gunicorn (GET the task
page, which leases the next task; POST its answer, plain and htmx); then 50 annotators at once, one thread and
one user each; then checks the database for over-assignment. Prints each run, the median of the runs, and
Markdown rows for BENCHMARKS.md. Only 127.0.0.1 is ever contacted; every loop stops by count and by time.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from _machine import busy_percent, code_version, machine_ticks, process_ticks, wait_until_quiet

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "benchmarks" / "output"
SEED = 20261124
SLUG = "queue-bench"
PASSWORD = "queue-bench-password"  # every benchmark user's; hashed once, so 50 users cost one PBKDF2
PHASES = ("single", "crowd")  # what the interference meter reports on, per run
HOST = "127.0.0.1"  # loopback only: the server binds here and the client talks to nothing else
# Bump when the generated data changes, so a kept template database is rebuilt.
DATA_VERSION = 2
VOCABULARY = (
    "the a model answer question because which would could should data reward policy human preference helpful "
    "harmless honest response prompt token training gradient loss batch step learning rate evaluation sample "
    "language assistant user system message context window summary explain example detail reason careful clear "
    "short long better worse first second finally however therefore also although python function return value"
)
WORDS = VOCABULARY.split()


# Data (children, with Django) ------------------------------------------------------------------------------


def _texts(rng: random.Random, count: int, median_words: int) -> list[str]:
    # Log-normal lengths, as in import_bench.py: mostly short, with a long tail.
    return [
        " ".join(rng.choices(WORDS, k=max(1, int(rng.lognormvariate(0, 0.8) * median_words)))).capitalize() + "."
        for _ in range(count)
    ]


def child_populate(tasks: int, annotators: int, overlap: int) -> None:
    """Fill a migrated, empty database: one project, its users, and `tasks` open tasks (2 ratings + 1 pairwise
    per prompt of 2 responses), written with INSERT … SELECT so 1M tasks take seconds, not an import."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import connection, transaction

    from annotate.models import Membership, Project

    User = get_user_model()
    rng = random.Random(SEED)
    prompts = -(-tasks // 3)
    with transaction.atomic(), connection.cursor() as cursor:
        project = Project.objects.create(
            name="Queue benchmark",
            slug=SLUG,
            guidelines="Prefer the **helpful** answer. Rate *factual errors* low; tick `unsafe` when in doubt.",
            task_kinds=["rating", "pairwise"],
            rating_descriptions={"1": "Useless", "3": "Acceptable", "5": "Ideal"},
            labels=["factual error", "unsafe", "off-topic"],
            overlap=overlap,
        )
        password = make_password(PASSWORD)
        names = ["solo", "direct", *(f"annotator-{i:02d}" for i in range(1, annotators + 1))]
        users = User.objects.bulk_create([User(username=name, password=password) for name in names])
        Membership.objects.bulk_create([Membership(project=project, user=user) for user in users])

        # A pool of texts, each row picking one by its id: realistic lengths without generating 1M in Python.
        pool = "CREATE TEMP TABLE {} AS SELECT n - 1 AS n, t FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, n)"
        cursor.execute(pool.format("prompt_text"), [_texts(rng, 997, 25)])
        cursor.execute(pool.format("response_text"), [_texts(rng, 1009, 120)])
        params = {"project": project.pk, "prompts": prompts, "tasks": tasks, "overlap": overlap}
        # Prompt p has responses 2p-1 and 2p; task j is about prompt (j-1)/3+1: a rating of each response,
        # then a pairwise of the two, so queue order (by id) mixes the kinds.
        cursor.execute(
            """
            INSERT INTO annotate_prompt (id, project_id, external_id, messages, metadata, split, created_at)
            SELECT p, %(project)s, 'queue-' || p,
                   jsonb_build_array(jsonb_build_object('role', 'user', 'content', t.t || '?')), '{}', 'train', now()
            FROM generate_series(1, %(prompts)s) p JOIN prompt_text t ON t.n = p %% 997;

            INSERT INTO annotate_response (id, prompt_id, content, source, generation_params, created_at)
            SELECT r, (r + 1) / 2, t.t, 'imported', '{}', now()
            FROM generate_series(1, 2 * %(prompts)s) r JOIN response_text t ON t.n = r %% 1009;

            INSERT INTO annotate_task (id, project_id, prompt_id, kind, required_annotations, annotation_count,
                                       priority, round_number, status, created_at)
            SELECT j, %(project)s, (j - 1) / 3 + 1, CASE (j - 1) %% 3 WHEN 2 THEN 'pairwise' ELSE 'rating' END,
                   %(overlap)s, 0, 0, 0, 'open', now()
            FROM generate_series(1, %(tasks)s) j;

            INSERT INTO annotate_taskresponse (task_id, response_id, position)
            SELECT j, 2 * ((j - 1) / 3) + 1 + CASE (j - 1) %% 3 WHEN 1 THEN 1 ELSE 0 END, 0
            FROM generate_series(1, %(tasks)s) j
            UNION ALL
            SELECT j, 2 * ((j - 1) / 3) + 2, 1 FROM generate_series(1, %(tasks)s) j WHERE (j - 1) %% 3 = 2;

            SELECT setval(pg_get_serial_sequence('annotate_prompt', 'id'), %(prompts)s);
            SELECT setval(pg_get_serial_sequence('annotate_response', 'id'), 2 * %(prompts)s);
            SELECT setval(pg_get_serial_sequence('annotate_task', 'id'), %(tasks)s);
            """,
            params,
        )
        project.recount_tasks()  # the rows went in by SQL, past the counters the app keeps
    print(json.dumps({"project": project.pk, "users": len(users)}))


def child_sessions(usernames: list[str]) -> None:
    """Log users in without a request: a stored session per user, as django.contrib.auth.login leaves it."""
    import django

    django.setup()
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model

    store = import_module(settings.SESSION_ENGINE).SessionStore
    keys = {}
    for user in get_user_model().objects.filter(username__in=usernames):
        session = store()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys[user.username] = session.session_key
    print(json.dumps(keys))


def child_direct(iterations: int, warmup: int) -> None:
    """Time the queue functions themselves, no HTTP or templates: lease, progress, answer and submit."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.http import QueryDict

    from annotate.models import Project

    project = Project.objects.get(slug=SLUG)
    user = get_user_model().objects.get(username="direct")
    rng = random.Random(SEED)
    timings: dict[str, list[float]] = {"next_assignment": [], "progress_for": [], "submit": []}
    for i in range(warmup + iterations):
        start = time.perf_counter()
        assignment = project.next_assignment(user)
        leased = time.perf_counter()
        project.progress_for(user)
        counted = time.perf_counter()
        if assignment is None:
            sys.exit("the queue ran dry during the in-process run: use more tasks or fewer iterations")
        data = QueryDict(mutable=True)
        for name, values in _answer_fields(rng, assignment.task.kind, {}, assignment.shown_order).items():
            data.setlist(name, values)
        assignment.submit(assignment.answer_from_shown(data), user=user)
        submitted = time.perf_counter()
        if i >= warmup:
            timings["next_assignment"].append(leased - start)
            timings["progress_for"].append(counted - leased)
            timings["submit"].append(submitted - counted)
    print(json.dumps(timings))


def child_profile(iterations: int, report: str) -> None:
    """cProfile the task page and its submit through Django's test client (no server): the queries each
    request makes and the functions the time goes to, written to `report` (and a .prof beside it)."""
    import cProfile
    import io
    import pstats

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client as TestClient
    from django.test.utils import CaptureQueriesContext

    browser = TestClient(HTTP_HOST=HOST)
    browser.force_login(get_user_model().objects.get(username="direct"))
    rng = random.Random(SEED)

    def once(htmx_page: str | None = None) -> str:
        page = htmx_page or browser.get(f"/p/{SLUG}/annotate/").content.decode()
        url, kind, fields = form_of(page)
        ranked = [int(name.removeprefix("rank-")) for name in fields if name.startswith("rank-")]
        headers = {"HX-Request": "true"} if htmx_page else {}
        return browser.post(url, _answer_fields(rng, kind, fields, ranked), headers=headers).content.decode()

    out = io.StringIO()
    for _ in range(10):
        once()
    with CaptureQueriesContext(connection) as get_queries:
        page = browser.get(f"/p/{SLUG}/annotate/").content.decode()
    url, kind, fields = form_of(page)
    with CaptureQueriesContext(connection) as post_queries:
        browser.post(url, _answer_fields(rng, kind, fields, []))
    with CaptureQueriesContext(connection) as htmx_queries:
        once(browser.get(f"/p/{SLUG}/annotate/", headers={"HX-Request": "true"}).content.decode())
    for title, queries in (("GET task page (new lease)", get_queries), ("POST submit", post_queries)):
        out.write(f"{title}: {len(queries)} queries\n" + "".join(f"  {q['sql'][:150]}\n" for q in queries))
    out.write(f"GET htmx + POST htmx submit (returns the next task): {len(htmx_queries)} queries\n\n")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        once()
    profiler.disable()
    profiler.dump_stats(Path(report).with_suffix(".prof"))
    out.write(f"cProfile of {iterations} GET + POST pairs, top 30 by cumulative time:\n")
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    Path(report).write_text(out.getvalue())


def child_explain(username: str) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) the next-task selection and the capped 'remaining' count for a user."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from annotate.models import REMAINING_CAP, Project

    project = Project.objects.get(slug=SLUG)
    user = get_user_model().objects.get(username=username)
    now = timezone.now()
    queries = {
        "next task (Project.next_assignment)": project.available_tasks(user, now).select_for_update(
            skip_locked=True, of=("self",)
        )[:1],
        "remaining (Project.progress_for)": project.available_tasks(user, now)[:REMAINING_CAP],
    }
    with transaction.atomic(), connection.cursor() as cursor:
        for title, queryset in queries.items():
            sql, params = queryset.query.sql_with_params()
            if "remaining" in title:
                sql = f"SELECT count(*) FROM ({sql}) sub"
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
            print(f"-- {title}\n" + "\n".join(row[0] for row in cursor.fetchall()) + "\n")


# Databases (parent, psycopg only) --------------------------------------------------------------------------


def child_env(database_url: str, secret_key: str) -> dict[str, str]:
    # Production settings over plain HTTP on loopback: no HTTPS redirect, no secure-only cookies.
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DEBUG": "false",
        "SECRET_KEY": secret_key,
        "ALLOWED_HOSTS": HOST,
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "SECURE_HSTS_SECONDS": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO_ROOT),
        "DJANGO_SETTINGS_MODULE": "arbiter.settings",
    }


def run_child(args: list[str], database_url: str, secret_key: str) -> str:
    """Run this script as a child with `args`; return what it printed."""
    result = subprocess.run(
        [sys.executable, __file__, *args],
        env=child_env(database_url, secret_key),
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    if result.returncode != 0:
        sys.exit(f"benchmark child {args[:2]} failed with exit code {result.returncode}")
    return result.stdout


def fingerprint(tasks: int, annotators: int, overlap: int) -> str:
    """What a kept template was built from: the migrations, the generator, and the sizes."""
    digest = hashlib.sha256(f"{DATA_VERSION}/{tasks}/{annotators}/{overlap}".encode())
    for path in sorted(REPO_ROOT.glob("*/migrations/0*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class Databases:
    """Template databases on the server DATABASE_URL names, one per size, copied for each run."""

    def __init__(self, url: str, secret_key: str) -> None:
        import psycopg

        self.url, self.secret_key = url, secret_key
        self.admin = psycopg.connect(self.url_for("postgres"), autocommit=True)

    def url_for(self, database: str) -> str:
        return urlunsplit(urlsplit(self.url)._replace(path=f"/{database}"))

    def template(self, tasks: int, annotators: int, overlap: int, rebuild: bool) -> str:
        """The template for this size, built unless one from the same migrations and generator exists."""
        name, mark = f"arbiter_queue_template_{tasks}", fingerprint(tasks, annotators, overlap)
        row = self.admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
        if row and row[0] == mark and not rebuild:
            print(f"reusing template {name}", file=sys.stderr)
            return name
        import psycopg

        start = time.perf_counter()
        self.admin.execute(f"DROP DATABASE IF EXISTS {name}")
        self.admin.execute(f"CREATE DATABASE {name}")
        url = self.url_for(name)
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "manage.py"), "migrate", "-v0"],
            env=child_env(url, self.secret_key),
            check=True,
            cwd=REPO_ROOT,
        )
        run_child(["--child", "populate", str(tasks), str(annotators), str(overlap)], url, self.secret_key)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # as autovacuum would have by then: statistics and visibility map
        self.admin.execute(f"COMMENT ON DATABASE {name} IS '{mark}'")
        print(f"built template {name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return name

    def fresh(self, template: str) -> str:
        name = f"{template.replace('_template', '')}_run"
        self.admin.execute(f"DROP DATABASE IF EXISTS {name}")
        # FILE_COPY copies the files instead of WAL-logging every page: seconds instead of a minute at 1M.
        self.admin.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        # Write the copy out now, or the kernel's writeback of a gigabyte competes with the measurements.
        os.sync()
        return self.url_for(name)

    def drop(self, url: str) -> None:
        self.admin.execute(f"DROP DATABASE IF EXISTS {urlsplit(url).path[1:]} WITH (FORCE)")

    def version(self) -> str:
        return "PostgreSQL " + self.admin.execute("SHOW server_version").fetchone()[0].split()[0]


def check_integrity(url: str) -> dict[str, int]:
    """After the crowd: what the queue promised, counted in the database. Every figure but `annotations`
    and `tasks_touched` must be 0."""
    import psycopg

    with psycopg.connect(url) as conn:

        def one(sql: str) -> int:
            return conn.execute(sql).fetchone()[0]

        return {
            "annotations": one("SELECT count(*) FROM annotate_annotation"),
            "tasks_touched": one("SELECT count(DISTINCT task_id) FROM annotate_assignment"),
            # More annotations on a task than it asked for.
            "over_annotated": one(
                """SELECT count(*) FROM (SELECT t.id FROM annotate_task t JOIN annotate_annotation a ON a.task_id = t.id
                   GROUP BY t.id, t.required_annotations HAVING count(*) > t.required_annotations) s"""
            ),
            # Annotations plus leases still live beyond what a task asked for: over-leased.
            "over_leased": one(
                """SELECT count(*) FROM annotate_task t JOIN LATERAL (
                       SELECT count(*) FILTER (WHERE status = 'active' AND expires_at > now()) AS live
                       FROM annotate_assignment WHERE task_id = t.id) l ON true
                   WHERE t.id IN (SELECT task_id FROM annotate_assignment)
                     AND t.annotation_count + l.live > t.required_annotations"""
            ),
            # The same person twice on one task, as an annotation or as a lease.
            "annotator_twice": one(
                """SELECT (SELECT count(*) FROM (SELECT 1 FROM annotate_annotation GROUP BY task_id, annotator_id
                           HAVING count(*) > 1) a)
                        + (SELECT count(*) FROM (SELECT 1 FROM annotate_assignment GROUP BY task_id, annotator_id
                           HAVING count(*) > 1) b)"""
            ),
            # The denormalised counter and status against the annotations they summarise.
            "count_mismatch": one(
                """SELECT count(*) FROM annotate_task t LEFT JOIN (SELECT task_id, count(*) n FROM annotate_annotation
                   GROUP BY task_id) a ON a.task_id = t.id
                   WHERE t.annotation_count <> coalesce(a.n, 0)
                      OR (t.status = 'complete') <> (coalesce(a.n, 0) >= t.required_annotations)"""
            ),
        }


# Machine ---------------------------------------------------------------------------------------------------


def _every_process() -> dict[int, tuple[str, int]]:
    """Each process's name and CPU ticks so far."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ticks := process_ticks(int(entry.name))) is not None:
            try:
                found[int(entry.name)] = ((entry / "comm").read_text().strip(), ticks)
            except OSError:
                continue
    return found


class Meter:
    """How much of the machine other work took while we measured: all busy CPU time less our own processes'
    (this one, gunicorn's master and workers, and the PostgreSQL backends serving the run's database).

    Client, server and database share the machine, and on a shared machine so does everyone else's work: a
    figure measured while others used a third of the CPUs says little. A thread samples our processes every
    half second, so a backend that exits (CONN_MAX_AGE recycling) keeps what it used up to its last sample.
    """

    def __init__(self, server: "Server", database_url: str) -> None:
        import psycopg

        self.server, self.database = server, urlsplit(database_url).path[1:]
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.stopped = threading.Event()
        self.sample(baseline=True)
        self.lap_start = (*machine_ticks(), 0)
        self.everyone = _every_process()
        self.culprits = ""
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def pids(self) -> set[int]:
        backends = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [self.database]
        ).fetchall()
        return {os.getpid(), self.server.process.pid, *self.server.worker_pids(), *(pid for (pid,) in backends)}

    def sample(self, baseline: bool = False) -> None:
        for pid in self.pids():
            if (ticks := process_ticks(pid)) is not None:
                # A process that appears later (a new backend) used all its CPU time on our behalf.
                self.first.setdefault(pid, ticks if baseline else 0)
                self.last[pid] = ticks

    def own(self) -> int:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.sample()

    def lap(self) -> float:
        """Percent of the machine's CPU time since the last lap that went to other work; `culprits` names the
        other processes that used most of it (those that ended in between are not seen)."""
        self.sample()
        busy, total, own = *machine_ticks(), self.own()
        start_busy, start_total, start_own = self.lap_start
        self.lap_start = (busy, total, own)
        everyone, ours = _every_process(), set(self.last)
        used: dict[str, int] = {}
        for pid, (name, ticks) in everyone.items():
            if pid not in ours:
                used[name] = used.get(name, 0) + ticks - self.everyone.get(pid, (name, 0))[1]
        self.everyone = everyone
        span = max(1, total - start_total)
        top = sorted(used.items(), key=lambda item: -item[1])[:3]
        self.culprits = ", ".join(f"{name} {100 * ticks / span:.0f}%" for name, ticks in top if ticks)
        return 100 * max(0, (busy - start_busy) - (own - start_own)) / span

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.conn.close()


# Server ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """gunicorn serving arbiter.wsgi on 127.0.0.1 with sync workers, stopped (by its own pid) on exit."""

    def __init__(self, database_url: str, secret_key: str, workers: int) -> None:
        self.port = free_port()
        self.log = (OUTPUT / "queue-gunicorn.log").open("ab")
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.process = subprocess.Popen(
            [str(gunicorn), "arbiter.wsgi", "--bind", f"{HOST}:{self.port}", "--workers", str(workers)]
            + ["--worker-class", "sync", "--timeout", "60", "--graceful-timeout", "5"],
            env=child_env(database_url, secret_key),
            cwd=REPO_ROOT,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"gunicorn exited with {self.process.returncode}: see {self.log.name}")
            try:
                if Client(self.port).request("GET", "/login/").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit("gunicorn did not answer within 60 s")

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


# Client ----------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: str
    location: str
    seconds: float


class Client:
    """One browser: a cookie jar and a keep-alive connection (gunicorn's sync workers close it anyway)."""

    def __init__(self, port: int, cookies: dict[str, str] | None = None) -> None:
        self.connection = http.client.HTTPConnection(HOST, port, timeout=30)
        self.cookies = dict(cookies or {})

    def request(self, method: str, path: str, form: dict | list | None = None, htmx: bool = False) -> Reply:
        headers = {"Host": HOST}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if method == "POST":
            body = urlencode(form or {}, doseq=True)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["X-CSRFToken"] = self.cookies.get("csrftoken", "")
        if htmx:
            headers["HX-Request"] = "true"
        start = time.perf_counter()
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed the kept-alive connection between requests: reconnect once.
                self.connection.close()
                if attempt == 2:
                    raise
        seconds = time.perf_counter() - start
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
        if response.getheader("Connection", "").lower() == "close":
            self.connection.close()
        return Reply(response.status, data.decode("utf-8", "replace"), response.getheader("Location", ""), seconds)

    def log_in(self, username: str, password: str) -> None:
        """Through the login form, as a person would: GET it for the CSRF cookie, POST the credentials."""
        page = self.request("GET", "/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
        reply = self.request(
            "POST", "/login/", {"username": username, "password": password, "csrfmiddlewaretoken": token[1]}
        )
        if reply.status != 302 or "sessionid" not in self.cookies:
            sys.exit(f"logging in through /login/ failed: HTTP {reply.status}")


_SUBMIT = re.compile(r"/p/[\w-]+/assignments/(\d+)/submit/")
_INPUT = re.compile(r"<input\b[^>]*>", re.S)
_ATTRIBUTE = re.compile(r'([\w-]+)="([^"]*)"')
_RANK = re.compile(r'name="rank-(\d+)"')  # a <select> per response


def form_of(page: str) -> tuple[str, str, dict[str, list[str]]] | None:
    """The submit URL, the task kind and the choices each field offers, read from a task page; None if no task."""
    url = _SUBMIT.search(page)
    if url is None:
        return None
    fields: dict[str, list[str]] = {}
    for tag in _INPUT.findall(page):
        attributes = dict(_ATTRIBUTE.findall(tag))
        if "name" in attributes:
            fields.setdefault(attributes["name"], []).append(attributes.get("value", ""))
    if "score" in fields:
        kind = "rating"
    elif "preference" in fields:
        kind = "pairwise"
    elif ranks := _RANK.findall(page):
        kind = "ranking"
        fields.update((f"rank-{response_id}", []) for response_id in ranks)
    else:
        raise ValueError("a task page without rating, pairwise or ranking fields")
    return url[0], kind, fields


def _answer_fields(rng: random.Random, kind: str, fields: dict[str, list[str]], ranked: list) -> dict[str, list]:
    """A plausible answer in the task form's own fields."""
    if kind == "rating":
        score = rng.choice(fields.get("score") or ["1", "2", "3", "4", "5"])
        labels = fields.get("labels") or ["factual error", "unsafe", "off-topic"]
        return {"score": [score], "labels": rng.sample(labels, rng.choice([0, 0, 1]))}
    if kind == "pairwise":
        answer = {"preference": [rng.choice(fields.get("preference") or ["a2", "a1", "tie", "b1", "b2"])]}
        return answer | ({"both_bad": ["on"]} if rng.random() < 0.1 else {})
    ranks = list(range(1, len(ranked) + 1))
    rng.shuffle(ranks)
    return {f"rank-{response_id}": [str(rank)] for response_id, rank in zip(ranked, ranks, strict=True)}


@dataclass
class Tally:
    """One annotator's requests: latencies by what was asked, and anything that went wrong."""

    next_task: list[float] = field(default_factory=list)
    submit: list[float] = field(default_factory=list)
    submit_htmx: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    empty: int = 0  # task pages that had no task left for the user (not an error)
    untimed: int = 0  # warm-up submits


def annotate_once(client: Client, tally: Tally, rng: random.Random, htmx_page: Reply | None = None) -> Reply | None:
    """Get the next task (or use the page htmx just returned) and submit an answer; the htmx reply if htmx."""
    page = htmx_page or client.request("GET", f"/p/{SLUG}/annotate/")
    if htmx_page is None:
        if page.status != 200:
            tally.errors.append(f"GET task page: HTTP {page.status}")
            return None
        tally.next_task.append(page.seconds)
    form = form_of(page.body)
    if form is None:
        tally.empty += 1
        return None
    url, kind, fields = form
    ranked = [int(name.removeprefix("rank-")) for name in fields if name.startswith("rank-")]
    reply = client.request("POST", url, _answer_fields(rng, kind, fields, ranked), htmx=htmx_page is not None)
    if htmx_page is None:
        if reply.status != 302:
            tally.errors.append(f"POST submit: HTTP {reply.status}")
        else:
            tally.submit.append(reply.seconds)
        return None
    if reply.status != 200:
        tally.errors.append(f"POST submit (htmx): HTTP {reply.status}")
        return None
    tally.submit_htmx.append(reply.seconds)
    return reply


def single_client(port: int, session: str, iterations: int, warmup: int, limit_s: float) -> Tally:
    """One annotator alone: GET + plain POST `iterations` times, then `iterations` htmx POSTs (each returns
    the next task, so it is submit and next-task in one request)."""
    client = Client(port, {"sessionid": session})
    rng = random.Random(SEED)
    scratch, tally = Tally(), Tally()
    deadline = time.monotonic() + limit_s
    for i in range(warmup + iterations):
        annotate_once(client, scratch if i < warmup else tally, rng)
        if time.monotonic() > deadline:
            break
    page = client.request("GET", f"/p/{SLUG}/annotate/", htmx=True)
    for _ in range(iterations):
        page = annotate_once(client, tally, rng, htmx_page=page)
        if page is None or time.monotonic() > deadline:
            break
    tally.errors += scratch.errors
    tally.untimed = len(scratch.submit)
    return tally


def crowd(port: int, sessions: list[str], iterations: int, limit_s: float) -> tuple[list[Tally], float]:
    """Every session its own thread, all started together, each looping GET + POST until its count or the
    deadline is reached or its queue runs dry. Returns the tallies and the wall-clock seconds."""
    tallies = [Tally() for _ in sessions]
    start_line = threading.Barrier(len(sessions) + 1)
    deadline = 0.0

    def annotator(index: int) -> None:
        client, rng, tally = Client(port, {"sessionid": sessions[index]}), random.Random(SEED + index), tallies[index]
        start_line.wait()
        for _ in range(iterations):
            try:
                annotate_once(client, tally, rng)
            except (OSError, http.client.HTTPException, ValueError) as error:
                tally.errors.append(f"{type(error).__name__}: {error}")
                client = Client(port, client.cookies)
            if tally.empty or time.monotonic() > deadline:
                break

    threads = [threading.Thread(target=annotator, args=(i,), daemon=True) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + limit_s
    start = time.perf_counter()
    start_line.wait()
    for thread in threads:
        thread.join(timeout=limit_s + 60)
    return tallies, time.perf_counter() - start


# Reporting -------------------------------------------------------------------------------------------------


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds."""
    if len(seconds) < 2:
        return (seconds[0] * 1000,) * 3 if seconds else (float("nan"),) * 3
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000


def medians(runs: list[dict]) -> dict[str, float]:
    """Each figure's median over the runs."""
    numbers = [key for key, value in runs[0].items() if isinstance(value, int | float)]
    return {key: statistics.median(run[key] for run in runs) for key in numbers}


def one_run(
    databases: Databases, template: str, args: argparse.Namespace, explain: Path | None, profile: Path | None
) -> dict:
    url = databases.fresh(template)
    secret = databases.secret_key
    try:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE annotate_project SET fill = %s WHERE slug = %s", [args.fill, SLUG])
        result: dict = {}
        direct = json.loads(run_child(["--child", "direct", str(args.iterations), str(args.warmup)], url, secret))
        for name, seconds in direct.items():
            result.update(zip((f"{name}_p50", f"{name}_p95", f"{name}_p99"), percentiles(seconds), strict=True))
        crowd_names = [f"annotator-{i:02d}" for i in range(1, args.annotators + 1)]
        sessions = json.loads(run_child(["--child", "sessions", *crowd_names], url, secret))
        server = Server(url, secret, args.workers)
        meter = None
        try:
            solo = Client(server.port)
            solo.log_in("solo", PASSWORD)
            meter = Meter(server, url)
            tally = single_client(server.port, solo.cookies["sessionid"], args.iterations, args.warmup, 300)
            result["single_others"], result["single_culprits"] = meter.lap(), meter.culprits
            for name in ("next_task", "submit", "submit_htmx"):
                values = percentiles(getattr(tally, name))
                result.update(zip((f"http_{name}_p50", f"http_{name}_p95", f"http_{name}_p99"), values, strict=True))
            result["single_errors"] = len(tally.errors)
            submitted = tally.untimed + len(tally.submit) + len(tally.submit_htmx)
            if explain:
                # Here, not after the crowd: at 1k tasks the crowd empties the queue.
                explain.write_text(run_child(["--child", "explain", "solo"], url, secret))
            meter.lap()  # the EXPLAIN child is ours, but not a process the meter follows
            cpu_before = time.process_time()
            tallies, seconds = crowd(server.port, [sessions[n] for n in crowd_names], args.crowd_count, args.crowd_s)
            result["crowd_client_cpu"] = 100 * (time.process_time() - cpu_before) / seconds
            result["crowd_others"], result["crowd_culprits"] = meter.lap(), meter.culprits
        finally:
            if meter:
                meter.stop()
            server.stop()
        requests = sum(len(t.next_task) + len(t.submit) + len(t.errors) + t.empty for t in tallies)
        errors = [error for t in tallies for error in t.errors]
        result.update(
            crowd_rps=requests / seconds,
            crowd_submits=sum(len(t.submit) for t in tallies),
            crowd_seconds=seconds,
            crowd_errors=len(errors),
            crowd_dry=sum(t.empty > 0 for t in tallies),
            crowd_next_p95=percentiles([s for t in tallies for s in t.next_task])[1],
            crowd_submit_p95=percentiles([s for t in tallies for s in t.submit])[1],
        )
        if errors:
            print(f"  crowd errors (first 5 of {len(errors)}): {errors[:5]}", file=sys.stderr)
        result.update(check_integrity(url))
        # Every submit the client saw succeed must be an annotation (the direct run's too).
        submitted += args.warmup + args.iterations + result["crowd_submits"]
        result["lost_submits"] = submitted - result["annotations"]
        if profile:
            run_child(["--child", "profile", "100", str(profile)], url, secret)
        return result
    finally:
        databases.drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="1000,100000,1000000", help="sizes, comma-separated (default 1k,100k,1M)")
    parser.add_argument("--runs", type=int, default=3, help="runs per size; medians are reported (default 3)")
    parser.add_argument("--iterations", type=int, default=300, help="single-client requests of each kind (300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed single-client iterations first (30)")
    parser.add_argument("--annotators", type=int, default=50, help="concurrent annotators, one user each (50)")
    parser.add_argument("--crowd-s", type=float, default=30, help="how long the crowd runs, at most (30 s)")
    parser.add_argument("--crowd-count", type=int, default=500, help="next+submit loops per annotator, at most")
    parser.add_argument("--overlap", type=int, default=3, help="annotations each task wants (k, default 3)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (default 4)")
    parser.add_argument("--fill", choices=["breadth", "depth"], default="breadth", help="the project's fill order")
    parser.add_argument(
        "--max-interference",
        type=float,
        default=10,
        help="runs continue until each phase has --runs runs in which other work took at most this percent (10)",
    )
    parser.add_argument("--retries", type=int, default=3, help="extra runs per size allowed for that (3)")
    parser.add_argument("--profile", action="store_true", help="cProfile the pages in-process after run 1")
    parser.add_argument(
        "--quiet-below", type=float, default=0, help="wait before each run until the machine is less busy (percent)"
    )
    parser.add_argument("--quiet-wait", type=float, default=600, help="wait at most this long for quiet (600 s)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild template databases even if kept ones fit")
    parser.add_argument("--postgres", action="store_true", help="run on a throwaway cluster from tests/postgres.sh")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        what, rest = args.child[0], args.child[1:]
        if what == "populate":
            child_populate(*map(int, rest))
        elif what == "sessions":
            child_sessions(rest)
        elif what == "direct":
            child_direct(*map(int, rest))
        elif what == "explain":
            child_explain(rest[0])
        elif what == "profile":
            child_profile(int(rest[0]), rest[1])
        return
    if args.postgres and "DATABASE_URL" not in os.environ:
        forwarded = [a for a in sys.argv[1:] if a != "--postgres"]
        script = REPO_ROOT / "tests" / "postgres.sh"
        sys.exit(subprocess.run([str(script), sys.executable, __file__, *forwarded]).returncode)
    url = os.environ.get("DATABASE_URL", "")
    if not urlsplit(url).scheme.startswith("postg"):
        sys.exit("needs PostgreSQL: pass --postgres (a throwaway cluster) or set DATABASE_URL=postgres://…")

    OUTPUT.mkdir(parents=True, exist_ok=True)
    databases = Databases(url, secrets.token_hex(32))
    sizes = [int(n) for n in args.tasks.split(",")]
    summary = []
    for tasks in sizes:
        template = databases.template(tasks, args.annotators, args.overlap, args.rebuild)
        runs: list[dict] = []
        for attempt in range(1, args.runs + args.retries + 1):
            explain = OUTPUT / f"queue-explain-{tasks}.txt" if attempt == 1 else None
            profile = OUTPUT / f"queue-profile-{tasks}.txt" if attempt == 1 and args.profile else None
            busy = wait_until_quiet(args.quiet_below, args.quiet_wait) if args.quiet_below else busy_percent()
            r = one_run(databases, template, args, explain, profile)
            runs.append(r)
            print(
                f"{tasks:,} tasks, run {attempt} (other work took {r['single_others']:.0f}% / {r['crowd_others']:.0f}%"
                f" of the machine during single / crowd, {busy:.0f}% busy before; crowd client"
                f" {r['crowd_client_cpu']:.0f}% of a CPU): direct next {r['next_assignment_p95']:.1f} ms p95,"
                f" progress {r['progress_for_p95']:.1f}, submit {r['submit_p95']:.1f}; HTTP next p50/p95/p99"
                f" {r['http_next_task_p50']:.1f}/{r['http_next_task_p95']:.1f}/{r['http_next_task_p99']:.1f} ms,"
                f" submit {r['http_submit_p50']:.1f}/{r['http_submit_p95']:.1f}/{r['http_submit_p99']:.1f},"
                f" htmx submit+next {r['http_submit_htmx_p95']:.1f} p95; crowd {r['crowd_rps']:.0f} req/s,"
                f" {r['crowd_submits']:,} submits, next p95 {r['crowd_next_p95']:.0f} ms, submit p95"
                f" {r['crowd_submit_p95']:.0f} ms, {r['crowd_errors']} errors, {r['crowd_dry']} ran dry;"
                f" over-annotated {r['over_annotated']}, over-leased {r['over_leased']}, twice"
                f" {r['annotator_twice']}, count mismatch {r['count_mismatch']}, lost {r['lost_submits']}"
                f"; others: {r['single_culprits'] or '-'} / {r['crowd_culprits'] or '-'}",
                file=sys.stderr,
            )
            clean = [sum(run[f"{phase}_others"] <= args.max_interference for run in runs) for phase in PHASES]
            if min(clean) >= args.runs:
                break
        summary.append((tasks, runs))

    def least_disturbed(runs: list[dict], phase: str) -> list[dict]:
        # Each phase's figures come from the runs that other work disturbed least during that phase.
        return sorted(runs, key=lambda run: run[f"{phase}_others"])[: args.runs]

    version, code = databases.version(), code_version("annotate/models.py", "annotate/views.py", "templates/annotate/")
    print(f"\n{version}, gunicorn {args.workers} sync workers, code {code}.")
    worst = max(r["single_others"] for _, runs in summary for r in least_disturbed(runs, "single"))
    print(
        f"\nOne annotator; medians of the {args.runs} least disturbed runs per size (other work took at most"
        f" {worst:.0f}% of the machine during them):\n"
    )
    print("| Tasks | Next task p50 / p95 / p99 | Submit p50 / p95 / p99 | Submit + next (htmx) p95 |")
    print("|---:|---:|---:|---:|")
    for tasks, runs in summary:
        m = medians(least_disturbed(runs, "single"))
        print(
            f"| {tasks:,} | {m['http_next_task_p50']:.1f} / {m['http_next_task_p95']:.1f} /"
            f" {m['http_next_task_p99']:.1f} ms | {m['http_submit_p50']:.1f} / {m['http_submit_p95']:.1f} /"
            f" {m['http_submit_p99']:.1f} ms | {m['http_submit_htmx_p95']:.1f} ms |"
        )
    worst = max(r["crowd_others"] for _, runs in summary for r in least_disturbed(runs, "crowd"))
    print(
        f"\n{args.annotators} annotators at once, up to {args.crowd_s:.0f} s; rate and latency are medians of the"
        f" {args.runs} least disturbed runs (other work at most {worst:.0f}%), errors and checks the worst of all"
        " runs:\n"
    )
    print("| Tasks | Runs | Req/s | Submits | Next task p95 | Submit p95 | Errors | Lost | Over-assigned | Twice |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tasks, runs in summary:
        m = medians(least_disturbed(runs, "crowd"))
        most = {key: max(run[key] for run in runs) for key in m}
        print(
            f"| {tasks:,} | {len(runs)} | {m['crowd_rps']:.0f} | {m['crowd_submits']:,.0f} |"
            f" {m['crowd_next_p95']:.0f} ms | {m['crowd_submit_p95']:.0f} ms | {most['crowd_errors']:.0f} |"
            f" {max(abs(run['lost_submits']) for run in runs)} |"
            f" {most['over_annotated'] + most['over_leased'] + most['count_mismatch']:.0f} |"
            f" {most['annotator_twice']:.0f} |"
        )
    print("\nIn-process queue functions (no HTTP, no templates), p50 / p95, same runs as the single annotator:\n")
    print("| Tasks | next_assignment | progress_for | submit |")
    print("|---:|---:|---:|---:|")
    for tasks, runs in summary:
        m = medians(least_disturbed(runs, "single"))
        print(
            f"| {tasks:,} | {m['next_assignment_p50']:.1f} / {m['next_assignment_p95']:.1f} ms"
            f" | {m['progress_for_p50']:.1f} / {m['progress_for_p95']:.1f} ms"
            f" | {m['submit_p50']:.1f} / {m['submit_p95']:.1f} ms |"
        )


if __name__ == "__main__":
    main()
