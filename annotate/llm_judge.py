"""LLM judges: an instruction-following model behind an OpenAI-compatible chat endpoint answers a project's tasks.

The judge is told the project's guidelines, the lead's rubric (or short constitution) and the exact answer format,
then shown the conversation and the responses, their text exactly as stored, labelled A/B (pairwise) or 1..N
(ranking, rating). It answers with one JSON object (optionally in a ```json fence), parsed strictly and checked as
any answer is (annotate.answers.clean_answer); an answer that does not parse is asked for again, telling the model
what was wrong, `judge.max_retries` times, then the task is a failure: no answer is ever guessed.

Position bias: a pairwise task is judged twice, the sides swapped the second time, and a ranking twice, the order
reversed; both are mapped back to the task's positions. The runs' agreement gives `consistent` and the confidence
(`combine_pairwise`, `combine_rankings`); disagreement is recorded as a tie (a ranking: mean ranks) with low
confidence, and counted as the judge's position inconsistency (annotate/judge_quality.py). A rating is asked once:
there is no order to swap, and its confidence stays unknown (None).

Requests go `judge.concurrency` at a time from a thread pool, no more than `judge.requests_per_minute` a minute
(RateLimit, shared by the threads); the openai client retries connection errors, 408, 429 and 5xx with backoff.
An endpoint that cannot be reached or refuses the judge (its key, its model) ends the run with an error naming it;
a request refused as bad (400, 413, 422: a task too long for the model, say) fails that task alone. A stop asked
(the run cancelled) is seen within a second, and no request goes out after it.
"""

import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import openai
from django.core.exceptions import ValidationError

from annotate.answers import clean_answer
from annotate.judges import Item, Verdict
from annotate.models import Judge, Project, TaskKind
from annotate.votes import ranking_votes

MAX_TOKENS = 256  # an answer is one small JSON object; a model that writes an essay first is asked again
TIMEOUT = 600.0  # seconds one request may take: a local model on a CPU is slow on long prompts
CLIENT_RETRIES = 3  # the openai client's own, on connection errors, 408, 429 and 5xx, with backoff
PAIRWISE_KEYS = ("choice", "strength", "both_bad")
RATING_KEYS = ("score", "labels")
RANKING_KEYS = ("ranking",)
FENCED = re.compile(r"```(?:json)?[ \t]*\n(.*)\n[ \t]*```", re.DOTALL)
Messages = list[dict[str, str]]
# How far one pairwise answer leans towards the task's response a: the scale the confidence is read on.
LEAN = {("a", 2): 1.0, ("a", 1): 0.75, ("tie", None): 0.5, ("b", 1): 0.25, ("b", 2): 0.0}


class LLMJudgeError(RuntimeError):
    """The judge cannot run: its API key is missing, or its endpoint is unreachable or refuses it."""


class AnswerError(ValueError):
    """The judge's answer does not parse, or is not an answer the task accepts; the message says why, to the model."""


class NoAnswer(Exception):
    """No valid answer for this task: the retries ran out, or the endpoint refused the request as bad."""

    def __init__(self, reason: str, attempts: list[str]) -> None:
        super().__init__(reason)
        self.attempts = attempts  # the raw answers


class Stopped(Exception):
    """The run was asked to stop: this item's next request is not sent."""


class RateLimit:
    """At most `per_minute` requests a minute across threads: a token bucket holding one token, so requests go
    out evenly spaced, 60 / per_minute seconds apart; 0: no limit."""

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 60 / per_minute if per_minute else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until this thread's request may go."""
        if not self.interval:
            return
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self.sleep(slot - now)


def judge_items(judge: Judge, items: list[Item], *, should_stop: Callable[[], bool]) -> Iterator[Verdict]:
    """The LLM judge's verdicts on these items, as they come back. should_stop() is looked at in the calling thread
    (the pool's threads touch no database) before each request goes out and each second while they are out; once it
    says stop, no further request is sent, and the items not finished get no verdict."""
    client = client_for(judge)
    project = judge.project  # read here, for the same reason
    limit = rate_limit(judge)
    stop = threading.Event()

    def send(messages: Messages) -> str:
        limit.wait()
        if stop.is_set():
            raise Stopped
        return complete(client, judge, messages)

    concurrency = max(1, judge.concurrency)
    pending: set[Future] = set()
    sent = 0
    with ThreadPoolExecutor(concurrency) as pool:
        try:
            while True:
                # Before sending more, and each second while waiting: a query per item at most, far below a reply's
                # cost, so that a stop asked between two items sends neither.
                if not stop.is_set() and should_stop():
                    stop.set()
                # A window of `concurrency` items: the next goes out as soon as one comes back.
                while sent < len(items) and len(pending) < concurrency and not stop.is_set():
                    pending.add(pool.submit(judge_item, send, judge, project, items[sent]))
                    sent += 1
                if not pending:
                    break
                finished, pending = wait(pending, timeout=1, return_when=FIRST_COMPLETED)
                for future in finished:
                    if not isinstance(future.exception(), Stopped):
                        yield future.result()  # an LLMJudgeError ends the run
        finally:
            for future in pending:
                future.cancel()


# Per (judge, rate): a worker process's runs of one judge share its limit.
_limits: dict[tuple[int | None, int], RateLimit] = {}
_limits_lock = threading.Lock()


def rate_limit(judge: Judge) -> RateLimit:
    """The judge's rate limit in this process: one across calls, so that a run's batches (annotate.judges.BATCH)
    do not each start with a request out of turn."""
    with _limits_lock:
        key = (judge.pk, judge.requests_per_minute)
        if key not in _limits:
            _limits[key] = RateLimit(judge.requests_per_minute)
        return _limits[key]


def client_for(judge: Judge) -> openai.OpenAI:
    """The judge's client; its API key read from the environment variable it names (LLMJudgeError if unset)."""
    api_key = "none"  # a local server checks none; the client insists on one
    if (name := judge.api_key_env) and not (api_key := os.environ.get(name, "")):
        raise LLMJudgeError(f"api_key_env: the environment variable {name} is not set (judge {judge.name})")
    return openai.OpenAI(base_url=judge.endpoint, api_key=api_key, timeout=TIMEOUT, max_retries=CLIENT_RETRIES)


def judge_item(send: Callable[[Messages], str], judge: Judge, project: Project, item: Item) -> Verdict:
    """One task's verdict, asking through send(messages) → the reply: pairwise and ranking tasks asked in both
    orders, a rating once."""
    n = len(item.responses)
    orders = [list(range(n))] if item.kind == TaskKind.RATING else [list(range(n)), list(reversed(range(n)))]
    detail: dict[str, Any] = {"attempts": [], "orders": []}
    answers = []
    for order in orders:
        messages = judge_messages(judge, project, item, order)
        read = functools.partial(parse, project=project, item=item, order=order)
        try:
            answer, attempts = ask(send, messages, read, judge.max_retries)
        except NoAnswer as failed:
            detail["attempts"] += failed.attempts
            return Verdict(item.task_id, None, detail=detail, error=str(failed))
        detail["attempts"] += attempts
        detail["orders"].append({"shown": [item.responses[i][0] for i in order], "answer": answer})
        answers.append(answer)
    if item.kind == TaskKind.RATING:
        return Verdict(item.task_id, answers[0], detail=detail)
    if item.kind == TaskKind.PAIRWISE:
        answer, confidence, consistent = combine_pairwise(*answers)
    else:
        answer, confidence, consistent = combine_rankings(*answers)
    return Verdict(item.task_id, answer, confidence=confidence, consistent=consistent, detail=detail)


def ask(
    send: Callable[[Messages], str], messages: Messages, parse: Callable[[str], dict[str, Any]], retries: int
) -> tuple[dict[str, Any], list[str]]:
    """The parsed answer and the raw answers, asking again after each one that does not parse, telling the model
    why; NoAnswer after 1 + retries answers."""
    attempts: list[str] = []
    for _ in range(1 + retries):
        try:
            text = send(messages)
        except NoAnswer as refused:
            raise NoAnswer(str(refused), attempts) from refused
        attempts.append(text)
        try:
            return parse(text), attempts
        except AnswerError as error:
            reason = str(error)
        messages = [
            *messages,
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"Your answer could not be read: {reason} Answer again with the JSON object "
             "alone, in the format given."},
        ]  # fmt: skip
    raise NoAnswer(f"no valid answer after {len(attempts)} attempts; the last: {reason}", attempts)


def complete(client: openai.OpenAI, judge: Judge, messages: Messages) -> str:
    """The model's reply (greedy): NoAnswer where the endpoint refuses this request alone as bad, an
    LLMJudgeError where it cannot be reached or refuses the judge."""
    try:
        reply = client.chat.completions.create(
            model=judge.model_name, messages=messages, temperature=0, max_tokens=MAX_TOKENS
        )
    except openai.APIConnectionError as error:
        raise LLMJudgeError(f"endpoint {judge.endpoint} is unreachable: {error}") from error
    except openai.APIStatusError as error:
        if error.status_code in (400, 413, 422):
            raise NoAnswer(f"the endpoint refused the request ({error.status_code}): {_said(error)}", []) from error
        raise LLMJudgeError(
            f"endpoint {judge.endpoint} refused model {judge.model_name} ({error.status_code}): {_said(error)}"
        ) from error
    return (reply.choices[0].message.content or "") if reply.choices else ""


def judge_messages(judge: Judge, project: Project, item: Item, order: list[int]) -> Messages:
    """The chat the judge is sent: the instructions and answer format (system), then the conversation and the
    responses in this order (user): order[0] is shown as A (or 1)."""
    system = [f'You judge responses for the project "{project.name}", as its annotators do.']
    if project.guidelines.strip():
        system.append(f"The annotators' guidelines:\n{project.guidelines.strip()}")
    if judge.rubric.strip():
        system.append(f"Judge by this rubric:\n{judge.rubric.strip()}")
    system.append(f"{answer_format(project, item.kind, len(order))}\nReply with that JSON object alone.")
    names = ["A", "B"] if item.kind == TaskKind.PAIRWISE else [str(number) for number in range(1, len(order) + 1)]
    shown = ["[Conversation]\n" + "\n".join(f"{m['role']}: {m['content']}" for m in item.messages)]
    for name, index in zip(names, order, strict=True):
        shown.append(f"[Response {name}]\n{item.responses[index][1]}\n[End of response {name}]")
    return [{"role": "system", "content": "\n\n".join(system)}, {"role": "user", "content": "\n\n".join(shown)}]


def answer_format(project: Project, kind: str, n: int) -> str:
    """What the judge is told to answer, for a task of this kind over n responses."""
    if kind == TaskKind.PAIRWISE:
        return (
            'Compare response A with response B. Answer {"choice": "A" | "B" | "tie", "strength": 1 | 2 | null, '
            '"both_bad": true | false}: choice is the better response, or "tie" when neither is; strength is 2 when '
            "it is much better, 1 when better, null for a tie; both_bad is true when neither response is acceptable."
        )
    if kind == TaskKind.RATING:
        low, high = project.rating_min, project.rating_max
        meanings = sorted(project.rating_descriptions.items(), key=lambda point: int(point[0]))
        points = f" ({', '.join(f'{point} = {text}' for point, text in meanings)})" if meanings else ""
        labels = ", ".join(json.dumps(label) for label in project.labels) or "none, give []"
        return (
            f'Rate the response on the scale {low} to {high}{points}. Answer {{"score": <a whole number from {low} '
            f'to {high}>, "labels": [<the labels that apply>]}}; the labels: {labels}.'
        )
    return (
        f'Rank the {n} responses, best first. Answer {{"ranking": [[<numbers>], ...]}}: groups of response numbers, '
        f"the best group first, responses in one group tied; each number from 1 to {n} exactly once, e.g. "
        '{"ranking": [[2], [1, 3]]}.'
    )


def parse(text: str, project: Project, item: Item, order: list[int]) -> dict[str, Any]:
    """The answer in the task's terms (response a = the task's first, whatever was shown first), or AnswerError:
    one JSON object with exactly the format's keys, optionally in a ```json fence, nothing else, nothing guessed."""
    body = text.strip()
    if fenced := FENCED.fullmatch(body):
        body = fenced.group(1).strip()
    if not body:
        raise AnswerError("it is empty.")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        raise AnswerError(f"it is not one JSON object ({error.msg} at character {error.pos}).") from None
    if not isinstance(data, dict):
        raise AnswerError("it is not a JSON object.")
    keys = {TaskKind.PAIRWISE: PAIRWISE_KEYS, TaskKind.RATING: RATING_KEYS}.get(item.kind, RANKING_KEYS)
    if set(data) != set(keys):
        raise AnswerError(f"give exactly the keys {', '.join(keys)} (it has {', '.join(sorted(data)) or 'none'}).")
    ids = [item.responses[i][0] for i in order]  # the response ids as shown
    if item.kind == TaskKind.PAIRWISE:
        sides = {"A": "ab"[order[0]], "B": "ab"[order[1]], "tie": "tie"}
        if data["choice"] not in sides:
            raise AnswerError(f'choice must be "A", "B" or "tie", not {json.dumps(data["choice"])}.')
        if data["choice"] != "tie" and data["strength"] not in (1, 2):
            raise AnswerError(f"strength must be 1 or 2, not {json.dumps(data['strength'])}.")
        data = {**data, "choice": sides[data["choice"]]}
    elif item.kind == TaskKind.RANKING:
        data = {"ranking": _ranking_ids(data["ranking"], ids)}
    try:
        fields = clean_answer(project, item.kind, sorted(ids), data)
    except ValidationError as refused:
        reasons = " ".join(f"{name}: {' '.join(errors)}" for name, errors in refused.message_dict.items())
        raise AnswerError(reasons) from None
    return {key: fields[key] for key in keys}


def _ranking_ids(ranking: Any, ids: list[int]) -> list[list[int]]:
    """A ranking of shown numbers (1 = the first shown) as one of response ids; AnswerError naming what is wrong."""
    n = len(ids)
    groups = ranking if isinstance(ranking, list) else None
    if not groups or not all(isinstance(group, list) and group for group in groups):
        raise AnswerError("ranking must be a list of non-empty lists of response numbers, best first.")
    numbers = [number for group in groups for number in group]
    if not all(type(number) is int and 1 <= number <= n for number in numbers):
        raise AnswerError(f"ranking must hold whole numbers from 1 to {n}.")
    if sorted(numbers) != list(range(1, n + 1)):
        raise AnswerError(f"ranking must hold each number from 1 to {n} exactly once.")
    return [sorted(ids[number - 1] for number in group) for group in groups]


def combine_pairwise(first: dict[str, Any], second: dict[str, Any]) -> tuple[dict[str, Any], float, bool]:
    """One answer from the two runs (sides swapped; both in task terms), its confidence, and whether they agreed.

    p = the runs' mean lean towards a (LEAN: a much better 1, better 0.75, tie 0.5, …). Agreeing runs keep their
    side, the weaker strength, and both_bad if both say so, with confidence 0.5 + |2p − 1| / 2: 1 for "much better"
    twice, 0.75 for "better" twice, 0.5 for a tie twice (the judge cannot tell). Runs that disagree are recorded as
    a tie, with confidence |2p − 1| / 2, never above 0.25.
    """
    p = (LEAN[first["choice"], first["strength"]] + LEAN[second["choice"], second["strength"]]) / 2
    both_bad = first["both_bad"] and second["both_bad"]
    if first["choice"] != second["choice"]:
        return {"choice": "tie", "strength": None, "both_bad": both_bad}, abs(2 * p - 1) / 2, False
    strength = None if first["choice"] == "tie" else min(first["strength"], second["strength"])
    answer = {"choice": first["choice"], "strength": strength, "both_bad": both_bad}
    return answer, 0.5 + abs(2 * p - 1) / 2, True


def combine_rankings(first: dict[str, Any], second: dict[str, Any]) -> tuple[dict[str, Any], float, bool]:
    """One ranking from the two runs (the order reversed; both of response ids), its confidence, and whether their
    top picks agreed.

    The responses are ranked by their mean rank (a group's place, 1 = best) over the two runs; equal means tie.
    s = the share of response pairs both runs order the same strict way; confidence 0.5 + s / 2 when the top picks
    agree (two identical strict rankings: 1; everything tied twice: 0.5), s / 2 when they do not (at most 0.5).
    """
    runs = [{rid: place for place, group in enumerate(run["ranking"]) for rid in group} for run in (first, second)]
    ids = sorted(runs[0])
    mean = {rid: runs[0][rid] + runs[1][rid] for rid in ids}  # twice the mean rank: exact, so ties stay ties
    ranking = [[rid for rid in ids if mean[rid] == value] for value in sorted(set(mean.values()))]
    votes = [ranking_votes(run["ranking"], ids) for run in (first, second)]  # each pair's side, as annotate/votes.py
    same = sum(votes[0][pair].side == votes[1][pair].side != "tie" for pair in votes[0])
    share = same / len(votes[0]) if votes[0] else 1.0
    consistent = set(first["ranking"][0]) == set(second["ranking"][0])
    return {"ranking": ranking}, (0.5 + share / 2) if consistent else share / 2, consistent


def _said(error: openai.APIStatusError) -> str:
    """What the endpoint said, from an OpenAI-style {"error": {"message"}} or FastAPI's {"detail"} body."""
    body = error.body if isinstance(error.body, dict) else {}
    message = body.get("detail") or body.get("message") or (body.get("error") or {}).get("message")
    return str(message or error.response.text)[:500]
