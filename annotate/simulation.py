"""Simulated annotators: bots that work a project's queue through the real HTTP API, answering by a hidden rule.

For dry-running a campaign before paying people, for the demo, and for tests that need annotations made the way
people make them (`manage.py simulate_annotators`). Each bot is a user `sim-<project>-<i>` with its own API
token and its own HTTP connection; it asks for its next task, answers it by the rule, submits, and goes on until
the queue has nothing left for it, it has answered its quota, or time is up. The bots see only what the API
shows: responses in the lease's displayed order, lettered A, B, …, and the answer fields with their choices.

Rules (the bot's hidden preference). Every rule measures a feature of a response's text:

- `word:<w>`  how often the word w occurs (case-insensitive, whole words: "cat" counts in "Cat!", not in "cats");
              more is better.
- `shorter`   length in characters; fewer is better.
- `longer`    length in characters; more is better.

How a bot answers by its rule:

- pairwise: the better response by the feature; equal features are a tie (and a tie has no strength). "Much
  better" (a2/b2) when the difference is large: for `word`, two or more occurrences apart; for `shorter` and
  `longer`, one response at least twice as long as the other. Both-bad is never set.
- ranking: responses grouped by the feature, best group first; equal features share a rank (a tie).
- rating: `word` rates by the count: 0 is the bottom of the project's scale, each occurrence one point up,
  capped at the top. `longer` and `shorter` rate by length band: under 50 characters, 50-99, 100-199,
  200-399, … (each band twice the last), the band number counted up from the bottom of the scale for `longer`
  and down from the top for `shorter`, capped at the scale's ends. On a 1-5 scale `longer` gives 1 below 50
  characters, 2 for 50-99, 3 for 100-199, 4 for 200-399, 5 from 400 (and `shorter` the reverse: 5 … 1).

Noise p: with probability p a bot answers uniformly at random over what the task's form accepts (any score
and any set of labels; any of the five pairwise choices; any rank 1..n for each response, so ties happen)
instead of by its rule. The summary counts draws, so a random answer that happens to agree with the rule
still counts as random.

Profiles (how a bot deviates from its rule, to try the quality measures on annotators whose faults are known):

- `careful`       the default: the rule (with the noise), and `think` seconds before each submit.
- `spammer`       every answer at random, as the noise draws it.
- `position:<p>`  with probability p prefers the response shown first (pairwise: "A better"; ranking: it first,
                  the rest by the rule), else the rule; ratings by the rule.
- `length:<p>`    with probability p prefers the longer response (pairwise: the longer one better, equal lengths
                  by the rule; ranking: longest first), else the rule; ratings by the rule.
- `fast`          the rule (with the noise), but submits at once, without the think time.

Every profile but `fast` waits the think time before it submits, so that each fault shows only in what it is (a
spammer that takes its time is caught by its answers, not its speed); the server measures that time (a lease's
time_spent runs from the lease, or the bot's answer before it, to the submit).

The simulated judge (`simulate_judge`): a judge of known accuracy against the same hidden rule, for calibration
and routing tests and the routing benchmark. Its verdicts go through annotate.judges.record, as a real judge's do
(validated, stored as its annotations, routed under hybrid labelling). For each task, seeded by the task's id:

- a confidence c drawn uniformly from [accuracy − w, accuracy + w], w = min(accuracy, 1 − accuracy), so that its
  mean is the accuracy; the answer is the rule's with probability c, else a wrong one. The judge is thus right on
  `accuracy` of its tasks on average and perfectly calibrated (right with probability c at confidence c), and its
  confidence is informative: right answers have a higher confidence on average.
- wrong answers: pairwise, the other side (strength 1; a tie by the rule becomes a or b); a rating one point off
  the rule's score (towards the scale's middle at an end); a ranking with the rule's groups in reverse order (one
  group: the first response put ahead of the rest). Right answers are the rule's, as a bot without noise gives.
- position inconsistency: on a share `inconsistency` of pairwise and ranking verdicts consistent is False (the
  rest True; ratings None). Their answer and confidence are drawn as the others', so that accuracy and
  calibration hold over every verdict; routing sends them to people whatever their confidence.

Submits are throttled (settings REST_FRAMEWORK, scope `submit`, ARBITER_THROTTLE_SUBMIT): a bot answered 429
waits for the seconds in Retry-After and sends the same request again, which the API makes safe (a submit
repeated stores one annotation).
"""

import json
import logging
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from http.client import HTTPConnection, HTTPSConnection
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler, get_internal_wsgi_application
from django.db import connection
from django.urls import reverse

from annotate.judges import BATCH, Item, Verdict, can_answer, items_for, record
from annotate.models import ApiToken, Judge, Membership, Project, Task

MUCH_MORE_WORDS = 2  # `word`: this many occurrences apart is "much better"
MUCH_LONGER = 2  # `shorter`/`longer`: this many times as long is "much better"
FIRST_LENGTH_BAND = 50  # characters: below this is band 0; each band after is twice as wide
TOKEN_NAME = "simulate_annotators"


def check_rule(rule: str) -> str:
    """The rule if it is `word:<w>` (w one word), `shorter` or `longer`; ValueError otherwise."""
    if rule in ("shorter", "longer"):
        return rule
    kind, _, word = rule.partition(":")
    if kind != "word" or not re.fullmatch(r"\w+", word):
        raise ValueError(f"Unknown rule {rule!r}: use word:<w> (one word), shorter or longer.")
    return rule


def feature(text: str, rule: str) -> int:
    """What the rule measures in a text: the target word's count, or the length in characters."""
    if check_rule(rule).startswith("word:"):
        word = rule.removeprefix("word:")
        return len(re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE))
    return len(text)


def _merit(text: str, rule: str) -> int:
    """The feature, signed so that higher is better."""
    return -feature(text, rule) if rule == "shorter" else feature(text, rule)


def _much_better(x: int, y: int, rule: str) -> bool:
    """Whether two features are far enough apart for "much better"."""
    if rule.startswith("word:"):
        return abs(x - y) >= MUCH_MORE_WORDS
    return max(x, y) >= MUCH_LONGER * min(x, y)


def _length_band(length: int) -> int:
    # 0 below 50 characters, 1 for 50-99, 2 for 100-199, …
    return 0 if length < FIRST_LENGTH_BAND else int(math.log2(length / FIRST_LENGTH_BAND)) + 1


def rating_score(text: str, rule: str, scale: list[int]) -> int:
    """The rule's score for one response on a scale (its points, lowest first)."""
    top = len(scale) - 1
    if rule == "shorter":
        return scale[max(top - _length_band(len(text)), 0)]
    steps = _length_band(len(text)) if rule == "longer" else feature(text, rule)
    return scale[min(steps, top)]


def _choices(payload: dict[str, Any], name: str) -> list[Any]:
    return next(f["choices"] for f in payload["answer_fields"] if f["name"] == name)


def rule_answer(payload: dict[str, Any], rule: str) -> dict[str, Any]:
    """The submit body the rule gives for a lease, as the next-task endpoint showed it."""
    responses = payload["responses"]  # in displayed order: A first
    if payload["kind"] == "rating":
        return {"score": rating_score(responses[0]["content"], rule, sorted(_choices(payload, "score")))}
    if payload["kind"] == "pairwise":
        side, strength = rule_preference(responses[0]["content"], responses[1]["content"], rule)
        return {"preference": "tie" if side == "tie" else f"{side}{strength}"}
    ranks = rule_ranks([(r["id"], r["content"]) for r in responses], rule)
    return {"ranks": {str(response_id): rank for response_id, rank in ranks.items()}}


def rule_preference(a: str, b: str, rule: str) -> tuple[str, int | None]:
    """The rule's side on a pair ("a", "b" or "tie") and its strength (1, 2; None for a tie)."""
    merit_a, merit_b = _merit(a, rule), _merit(b, rule)
    if merit_a == merit_b:
        return "tie", None
    side = "a" if merit_a > merit_b else "b"
    return side, 2 if _much_better(feature(a, rule), feature(b, rule), rule) else 1


def rule_ranks(responses: list[tuple[int, str]], rule: str) -> dict[int, int]:
    """The rule's rank (1 best) of each (response id, text); equal merits share a rank."""
    merits = {response_id: _merit(text, rule) for response_id, text in responses}
    # Dense ranks: equal merits share a rank, and the ranks run 1, 2, … with no gaps.
    rank_of = {merit: rank for rank, merit in enumerate(sorted(set(merits.values()), reverse=True), start=1)}
    return {response_id: rank_of[merit] for response_id, merit in merits.items()}


def random_answer(payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A valid answer drawn uniformly over what the task's form accepts."""
    if payload["kind"] == "rating":
        labels = [label for label in _choices(payload, "labels") if rng.random() < 0.5]
        return {"score": rng.choice(_choices(payload, "score")), "labels": labels}
    if payload["kind"] == "pairwise":
        return {"preference": rng.choice(_choices(payload, "preference"))}
    n = len(payload["responses"])
    return {"ranks": {str(r["id"]): rng.randint(1, n) for r in payload["responses"]}}


class Profile(NamedTuple):
    kind: str  # careful, spammer, position, length, fast
    p: float = 0.0  # position and length: how often the bias decides

    def __str__(self) -> str:
        return f"{self.kind}:{self.p:g}" if self.kind in ("position", "length") else self.kind


CAREFUL = Profile("careful")


def check_profile(text: str) -> Profile:
    """`careful`, `spammer`, `fast`, `position:<p>` or `length:<p>` (0 < p <= 1); ValueError otherwise."""
    kind, _, p = text.partition(":")
    if kind in ("careful", "spammer", "fast") and not p:
        return Profile(kind)
    if kind in ("position", "length"):
        try:
            chance = float(p)
        except ValueError:
            chance = math.nan
        if 0 < chance <= 1:
            return Profile(kind, chance)
    raise ValueError(
        f"Unknown profile {text!r}: use careful, spammer, fast, position:<p> or length:<p> with 0 < p <= 1."
    )


def biased_answer(payload: dict[str, Any], rule: str, bias: str) -> dict[str, Any] | None:
    """The answer a position or length bias gives a lease, or None where it has no say (ratings, equal lengths)."""
    responses = payload["responses"]  # in displayed order: A first
    if payload["kind"] == "rating":
        return None
    if bias == "position":
        first = responses[0]["id"]
    else:
        lengths = [len(r["content"]) for r in responses]
        if lengths.count(max(lengths)) > 1:
            return None
        first = responses[lengths.index(max(lengths))]["id"]
    if payload["kind"] == "pairwise":
        return {"preference": "a1" if first == responses[0]["id"] else "b1"}
    by_rule = rule_answer(payload, rule)["ranks"]
    others = sorted((rank, int(rid)) for rid, rank in by_rule.items() if int(rid) != first)
    ranks = {str(first): 1} | {str(rid): place for place, (_, rid) in enumerate(others, start=2)}
    return {"ranks": ranks}


class Answer(NamedTuple):
    body: dict[str, Any]  # what to POST to the lease's submit_url
    how: str  # "rule", "random" (the noise, or a spammer) or "bias" (a position or length bias decided it)


def answer(payload: dict[str, Any], rule: str, noise: float, rng: random.Random, profile: Profile = CAREFUL) -> Answer:
    """A bot's answer to a lease, as its profile has it: at random, by its bias, or by the rule (with probability
    `noise` at random instead)."""
    if payload["kind"] == "write":  # nothing to judge: a bot keeps the draft, or writes the rule's word
        draft = payload["responses"][0]["content"] if payload["responses"] else ""
        return Answer({"text": draft or f"An answer with {rule.partition(':')[2] or 'words'}."}, "rule")
    if profile.kind == "spammer" or rng.random() < noise:
        return Answer(random_answer(payload, rng), "random")
    biased = None
    if profile.kind in ("position", "length") and rng.random() < profile.p:
        biased = biased_answer(payload, rule, profile.kind)
    if biased is not None:
        return Answer(biased, "bias")
    return Answer(rule_answer(payload, rule), "rule")


# Bots ------------------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What bots did; bots keep their own and the run adds them up, so no thread shares one."""

    answered: Counter = field(default_factory=Counter)  # by task kind
    by_rule: int = 0
    at_random: int = 0
    by_bias: int = 0
    requests: int = 0
    throttled: int = 0  # 429s answered, each waited out
    throttle_wait: float = 0.0  # seconds spent waiting on Retry-After
    errors: list[str] = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        self.answered += other.answered
        self.by_rule += other.by_rule
        self.at_random += other.at_random
        self.by_bias += other.by_bias
        self.requests += other.requests
        self.throttled += other.throttled
        self.throttle_wait += other.throttle_wait
        self.errors += other.errors


class ApiError(Exception):
    """A response the bot did not expect: its method, path, status and detail."""


class ApiClient:
    """One bot's keep-alive connection to the API: JSON bodies, its bearer token, and 429s waited out."""

    def __init__(self, base_url: str, token: str, tally: Tally) -> None:
        parts = urlsplit(base_url)
        connection_class = HTTPSConnection if parts.scheme == "https" else HTTPConnection
        self.connection = connection_class(parts.hostname, parts.port, timeout=60)
        self.prefix = parts.path.rstrip("/")  # where the app is mounted, if not at the root
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.tally = tally

    def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """POST `body` as JSON; the status and decoded JSON (None when empty). A 429 is waited out and retried."""
        while True:
            self.connection.request("POST", path, body=json.dumps(body or {}), headers=self.headers)
            response = self.connection.getresponse()
            content = response.read()
            self.tally.requests += 1
            if response.status != 429:
                return response.status, json.loads(content) if content else None
            wait = float(response.getheader("Retry-After") or 1)
            self.tally.throttled += 1
            self.tally.throttle_wait += wait
            # A server's keep-alive may not outlast the wait (gunicorn's is 2 s): reconnect after it.
            self.connection.close()
            time.sleep(wait)

    def expect(self, path: str, statuses: tuple[int, ...], body: dict[str, Any] | None = None) -> tuple[int, Any]:
        status, data = self.post(path, body)
        if status not in statuses:
            detail = data.get("detail", data) if isinstance(data, dict) else data
            raise ApiError(f"POST {path}: {status} {detail}")
        return status, data

    def close(self) -> None:
        self.connection.close()


@dataclass
class Bot:
    username: str
    token: ApiToken
    plaintext: str  # the token itself, which only this run knows
    rng: random.Random
    profile: Profile = CAREFUL


def run_bot(
    bot: Bot,
    *,
    base_url: str,
    project_slug: str,
    rule: str,
    noise: float,
    per_user: int | None,
    deadline: float,
    think: float = 0.0,
) -> Tally:
    """Work the queue as one bot until it is empty for it, `per_user` tasks are answered, or the deadline; a
    bot of any profile but `fast` waits `think` seconds on each task before it submits."""
    tally = Tally()
    try:
        with closing(ApiClient(base_url, bot.plaintext, tally)) as client:
            next_path = client.prefix + reverse("api:next_task", args=[project_slug])
            while (per_user is None or sum(tally.answered.values()) < per_user) and time.monotonic() < deadline:
                status, lease = client.expect(next_path, (200, 204))
                if status == 204:
                    break
                reply = answer(lease, rule, noise, bot.rng, bot.profile)
                if bot.profile.kind != "fast" and think:
                    time.sleep(think)
                # submit_url is the server's own path (with its script prefix), so it goes as it is.
                client.expect(lease["submit_url"], (200,), reply.body)
                tally.answered[lease["kind"]] += 1
                tally.by_rule += reply.how == "rule"
                tally.at_random += reply.how == "random"
                tally.by_bias += reply.how == "bias"
    except Exception as error:  # a bot's failure goes into the summary, even one in making its client (a bad URL)
        tally.errors.append(f"{bot.username}: {type(error).__name__}: {error}")
    return tally


def enrol_bots(
    project: Project, count: int, *, seed: int | None = None, profiles: list[Profile] | None = None
) -> list[Bot]:
    """Users sim-<slug>-1 … as annotators of the project (made or reused), each with a fresh API token; the first
    bots take `profiles` in order, the rest are careful."""
    profiles = list(profiles or [])
    if len(profiles) > count:
        raise ValueError(f"{len(profiles)} profiles for {count} bots: give at least as many bots as profiles.")
    users = get_user_model()
    bots = []
    for i in range(1, count + 1):
        user, created = users.objects.get_or_create(username=f"sim-{project.slug}-{i}")
        if created:
            user.set_unusable_password()  # bots sign in with their token only
            user.save(update_fields=["password"])
        Membership.objects.get_or_create(project=project, user=user)
        token, plaintext = ApiToken.issue(user, TOKEN_NAME)
        rng = random.Random(f"{seed}:{i}") if seed is not None else random.Random()
        bots.append(Bot(user.username, token, plaintext, rng, profiles[i - 1] if i <= len(profiles) else CAREFUL))
    return bots


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would bury the summary


def _one_at_a_time(app: Callable) -> Callable:
    lock = threading.Lock()

    def serialised(environ: dict[str, Any], start_response: Callable) -> Any:
        with lock:
            return app(environ, start_response)

    return serialised


def _as_the_site(app: Callable) -> Callable:
    """Requests as the site's TLS front end hands them on: over https, to a host the site answers to.

    The in-process server is plain HTTP on 127.0.0.1, only this process's bots call it, and without this a
    production configuration (DEBUG off) would redirect every call to https, or refuse its Host.
    """
    host = next((name.lstrip(".") for name in settings.ALLOWED_HOSTS if name != "*"), None)

    def wrapped(environ: dict[str, Any], start_response: Callable) -> Any:
        environ["wsgi.url_scheme"] = "https"
        if host:
            environ["HTTP_HOST"] = host
        return app(environ, start_response)

    return wrapped


@contextmanager
def serve_in_process() -> Iterator[str]:
    """Serve this project's WSGI app on 127.0.0.1 at a free port, a thread per connection; yields its base URL."""
    app = _as_the_site(get_internal_wsgi_application())
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        # The tests' in-memory SQLite shares one cache between connections, where a second writer fails at once
        # ("database table is locked") instead of waiting as it does on a file: there, requests take turns.
        app = _one_at_a_time(app)
    server = ThreadedWSGIServer(("127.0.0.1", 0), _QuietHandler, allow_reuse_address=False)
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, name="simulate-annotators-server", daemon=True)
    thread.start()
    # Each 429 would be logged as a warning; the summary counts them. Server errors are still logged.
    request_log = logging.getLogger("django.request")
    level = request_log.level
    request_log.setLevel(logging.ERROR)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        request_log.setLevel(level)
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class SimulationResult:
    base_url: str
    in_process: bool
    bots: list[Bot]
    tally: Tally
    elapsed: float

    def summary(self) -> list[str]:
        tally = self.tally
        answered = sum(tally.answered.values())
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(tally.answered.items())) or "none"
        where = "an in-process server" if self.in_process else "the server"
        profiles = Counter(str(bot.profile) for bot in self.bots)
        shown = ", ".join(f"{name} {n}" for name, n in sorted(profiles.items()))
        return [
            f"bots: {len(self.bots)} ({shown}), at {self.base_url} ({where})",
            *(f"  {bot.username}: {bot.profile}" for bot in self.bots if bot.profile != CAREFUL),
            f"answered {answered} tasks: {kinds}",
            f"by the rule {tally.by_rule}, at random (noise or spammers) {tally.at_random}, by a bias {tally.by_bias}",
            f"throttled (429) {tally.throttled} times"
            + (f", each waited out as Retry-After said: {tally.throttle_wait:.1f} s in all" if tally.throttled else ""),
            f"errors {len(tally.errors)}",
            *(f"  {error}" for error in tally.errors),
            f"elapsed {self.elapsed:.1f} s, {tally.requests} requests, "
            f"{tally.requests / max(self.elapsed, 1e-9):.1f} requests/s",
        ]


def simulate_annotators(
    *,
    project: Project,
    users: int,
    rule: str,
    noise: float,
    url: str | None = None,
    per_user: int | None = None,
    seconds: float | None = None,
    seed: int | None = None,
    profiles: list[Profile] | None = None,
    think: float = 0.0,
) -> SimulationResult:
    """Run `users` bots at once against the API at `url` (a server on this database), or an in-process server; the
    first take `profiles`, the others are careful; all but the fast ones wait `think` seconds on each task."""
    check_rule(rule)
    bots = enrol_bots(project, users, seed=seed, profiles=profiles)
    started = time.monotonic()
    deadline = started + seconds if seconds is not None else math.inf
    try:
        with (
            serve_in_process() if url is None else nullcontext(url) as base_url,
            ThreadPoolExecutor(len(bots), thread_name_prefix="simulate-annotators-bot") as pool,
        ):
            work = partial(
                run_bot,
                base_url=base_url,
                project_slug=project.slug,
                rule=rule,
                noise=noise,
                per_user=per_user,
                deadline=deadline,
                think=think,
            )
            tallies = list(pool.map(work, bots))
    finally:
        # The tokens were for this run only; revoked, they stay listed under the bots' names.
        for bot in bots:
            bot.token.revoke()
    total = Tally()
    for tally in tallies:
        total.add(tally)
    return SimulationResult(base_url, url is None, bots, total, time.monotonic() - started)


# The simulated judge ---------------------------------------------------------------------------------------------


def _judge_answer(item: Item, rule: str, scale: list[int], right: bool, rng: random.Random) -> dict[str, Any]:
    """The rule's answer to an item in a verdict's terms, or (`right` False) a wrong one."""
    if item.kind == "rating":
        score = rating_score(item.responses[0][1], rule, scale)
        if not right:
            i = scale.index(score)
            score = scale[i + 1 if i < len(scale) // 2 else i - 1]
        return {"score": score, "labels": []}
    if item.kind == "pairwise":
        side, strength = rule_preference(item.responses[0][1], item.responses[1][1], rule)
        if right:
            return {"choice": side, "strength": strength, "both_bad": False}
        wrong = {"a": "b", "b": "a"}.get(side) or rng.choice("ab")
        return {"choice": wrong, "strength": 1, "both_bad": False}
    ranks = rule_ranks(item.responses, rule)
    groups = [[rid for rid, _ in item.responses if ranks[rid] == rank] for rank in sorted(set(ranks.values()))]
    if right:
        return {"ranking": groups}
    if len(groups) > 1:
        return {"ranking": groups[::-1]}
    first, *rest = groups[0]
    return {"ranking": [[first], rest]}


def simulate_judge(
    judge: Judge,
    tasks: Iterable[Task],
    *,
    accuracy: float,
    seed: int,
    rule: str,
    inconsistency: float = 0.1,
) -> Counter:
    """Answer `tasks` as a judge right on `accuracy` of them by `rule` (see the module's docstring), recording each
    verdict through annotate.judges.record. Counts: answered, skipped (answered before, or a written answer), right,
    wrong, inconsistent."""
    check_rule(rule)
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy {accuracy!r}: give a share from 0 to 1.")
    if not 0 <= inconsistency <= 1:
        raise ValueError(f"inconsistency {inconsistency!r}: give a share from 0 to 1.")
    project = judge.project
    scale = list(range(project.rating_min, project.rating_max + 1))
    spread = min(accuracy, 1 - accuracy)
    counts: Counter = Counter(answered=0, skipped=0, right=0, wrong=0, inconsistent=0)
    tasks = list(tasks)
    for start in range(0, len(tasks), BATCH):
        batch = tasks[start : start + BATCH]
        todo = [task for task in batch if can_answer(judge, task.kind)]
        counts["skipped"] += len(batch) - len(todo)
        for item in items_for(todo):
            rng = random.Random(f"{seed}:{item.task_id}")  # the same verdict for a task whatever else is judged
            confidence = rng.uniform(accuracy - spread, accuracy + spread)
            right = rng.random() < confidence
            reply = _judge_answer(item, rule, scale, right, rng)
            consistent = None if item.kind == "rating" else rng.random() >= inconsistency
            verdict = Verdict(
                task_id=item.task_id,
                answer=reply,
                confidence=round(confidence, 4),
                consistent=consistent,
                detail={"simulated": True, "rule": rule, "right": right, "attempts": [json.dumps(reply)]},
            )
            if record(judge, verdict) is None:
                counts["skipped"] += 1
                continue
            counts["answered"] += 1
            counts["right" if right else "wrong"] += 1
            counts["inconsistent"] += consistent is False
    return counts
