"""An LLM judge's logic, without a database or a server: the prompt it is sent, strict parsing of its answers, retries,
the two orders and what their agreement gives, and the rate limit. The judge against a real `transformers serve` is
tests/training/test_judge_serve.py."""

import json
import socket
import subprocess
import sys
import threading

import pytest
from django.conf import settings

from annotate import llm_judge
from annotate.judges import Item
from annotate.llm_judge import AnswerError, LLMJudgeError, NoAnswer, RateLimit
from annotate.models import Judge, Project

HELPFUL, TERSE = "Paris is the capital.\n\n  *Helpful*, with markdown  ", "No."


@pytest.fixture
def project():
    return Project(
        name="Helpfulness",
        slug="helpfulness",
        guidelines="Prefer the **helpful** answer.",
        rating_min=1,
        rating_max=5,
        rating_descriptions={"10": "never shown", "1": "Useless", "5": "Ideal"},
        labels=["factual error", "unsafe"],
    )


@pytest.fixture
def judge(project):
    return Judge(project=project, name="gpt", kind="llm", endpoint="http://127.0.0.1:1/v1", model_name="m",
                 rubric="1. Correctness first.", max_retries=2)  # fmt: skip


def pairwise(task_id=1) -> Item:
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    return Item(task_id=task_id, kind="pairwise", messages=conversation, responses=[(11, HELPFUL), (12, TERSE)])


def ranking() -> Item:
    return Item(task_id=2, kind="ranking", messages=[{"role": "user", "content": "Hi"}],
                responses=[(21, "one"), (22, "two"), (23, "three")])  # fmt: skip


def rating() -> Item:
    return Item(task_id=3, kind="rating", messages=[{"role": "user", "content": "Hi"}], responses=[(31, "Hello")])


def answer(choice, strength=1, both_bad=False) -> str:
    return json.dumps({"choice": choice, "strength": strength, "both_bad": both_bad})


class TestPrompt:
    def test_system_holds_guidelines_rubric_and_the_exact_format(self, judge, project):
        system, user = llm_judge.judge_messages(judge, project, pairwise(), [0, 1])
        assert system["role"] == "system" and user["role"] == "user"
        assert "Prefer the **helpful** answer." in system["content"]
        assert "1. Correctness first." in system["content"]
        assert '{"choice": "A" | "B" | "tie", "strength": 1 | 2 | null, "both_bad": true | false}' in system["content"]

    def test_responses_are_shown_exactly_as_stored_in_the_order_asked(self, judge, project):
        _, straight = llm_judge.judge_messages(judge, project, pairwise(), [0, 1])
        _, swapped = llm_judge.judge_messages(judge, project, pairwise(), [1, 0])
        assert f"[Response A]\n{HELPFUL}\n[End of response A]" in straight["content"]
        assert f"[Response B]\n{TERSE}\n[End of response B]" in straight["content"]
        assert f"[Response A]\n{TERSE}\n[End of response A]" in swapped["content"]
        assert "system: Be brief.\nuser: Capital of France?" in straight["content"]

    def test_a_rating_is_asked_on_the_projects_scale_and_labels(self, judge, project):
        system, user = llm_judge.judge_messages(judge, project, rating(), [0])
        assert "scale 1 to 5 (1 = Useless, 5 = Ideal, 10 = never shown)" in system["content"]
        assert 'the labels: "factual error", "unsafe"' in system["content"]
        assert "[Response 1]\nHello" in user["content"]

    def test_a_ranking_numbers_the_responses(self, judge, project):
        system, user = llm_judge.judge_messages(judge, project, ranking(), [2, 1, 0])
        assert "each number from 1 to 3 exactly once" in system["content"]
        assert "[Response 1]\nthree" in user["content"] and "[Response 3]\none" in user["content"]

    def test_no_guidelines_or_rubric_no_empty_sections(self, judge, project):
        project.guidelines, judge.rubric = "", " "
        system, _ = llm_judge.judge_messages(judge, project, pairwise(), [0, 1])
        assert "guidelines" not in system["content"] and "rubric" not in system["content"]


class TestParse:
    def parse(self, text, project, item=None, order=(0, 1)):
        return llm_judge.parse(text, project=project, item=item or pairwise(), order=list(order))

    def test_a_shown_side_maps_back_to_the_tasks_position(self, project):
        assert self.parse(answer("A", 2), project) == {"choice": "a", "strength": 2, "both_bad": False}
        assert self.parse(answer("A", 2), project, order=(1, 0))["choice"] == "b"
        assert self.parse(answer("tie", None, True), project, order=(1, 0)) == {
            "choice": "tie", "strength": None, "both_bad": True,
        }  # fmt: skip

    def test_a_json_fence_is_read(self, project):
        assert self.parse(f"```json\n{answer('B')}\n```", project)["choice"] == "b"
        assert self.parse(f"  ```\n{answer('B')}\n```\n", project)["choice"] == "b"

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("", "empty"),
            (f"I think A. {answer('A')}", "not one JSON object"),
            (f"{answer('A')}\n{answer('B')}", "not one JSON object"),
            (f"```json\n{answer('A')}\n``` because A is clear", "not one JSON object"),
            ('["A"]', "not a JSON object"),
            ('{"choice": "A", "strength": 1}', "give exactly the keys choice, strength, both_bad"),
            ('{"choice": "A", "strength": 1, "both_bad": false, "why": "x"}', "give exactly the keys"),
            (answer("a"), 'choice must be "A", "B" or "tie", not "a"'),
            (answer("A", 3), "strength must be 1 or 2, not 3"),
            (answer("B", None), "strength must be 1 or 2, not null"),
            (answer("tie", 2), "strength: A tie has no strength"),
            (answer("A", 1, "maybe"), "both_bad: Must be true or false"),
        ],
    )
    def test_anything_else_is_refused_saying_why(self, project, text, reason):
        with pytest.raises(AnswerError, match=reason.replace("(", r"\(")):
            self.parse(text, project)

    def test_a_rating_within_the_scale_and_labels(self, project):
        text = '{"score": 4, "labels": ["unsafe", "factual error"]}'
        assert self.parse(text, project, rating(), (0,)) == {"score": 4, "labels": ["factual error", "unsafe"]}
        with pytest.raises(AnswerError, match="score: 6 is outside the scale 1–5"):
            self.parse('{"score": 6, "labels": []}', project, rating(), (0,))
        with pytest.raises(AnswerError, match="labels: Not in the project's label set: rude"):
            self.parse('{"score": 2, "labels": ["rude"]}', project, rating(), (0,))

    def test_a_ranking_of_shown_numbers_becomes_one_of_response_ids(self, project):
        text = '{"ranking": [[1], [3, 2]]}'
        assert self.parse(text, project, ranking(), (0, 1, 2)) == {"ranking": [[21], [22, 23]]}
        assert self.parse(text, project, ranking(), (2, 1, 0)) == {"ranking": [[23], [21, 22]]}

    @pytest.mark.parametrize(
        ("ranking", "reason"),
        [([[1], [2]], "each number from 1 to 3 exactly once"), ([[1, 2], [2, 3]], "exactly once"),
         ([[1], [2], [4]], "from 1 to 3"), ([1, 2, 3], "non-empty lists"), ([["1"], [2], [3]], "whole numbers"),
         ([[1], [], [2, 3]], "non-empty lists")],
    )  # fmt: skip
    def test_a_ranking_that_misses_or_repeats_a_response_is_refused(self, project, ranking, reason):
        with pytest.raises(AnswerError, match=reason):
            self.parse(json.dumps({"ranking": ranking}), project, globals()["ranking"](), (0, 1, 2))


class TestRetries:
    def test_a_bad_answer_is_asked_again_telling_the_model_why(self, project):
        replies, asked = iter(["A is better.", answer("B", 2)]), []
        parse = lambda text: llm_judge.parse(text, project, pairwise(), [0, 1])  # noqa: E731
        parsed, attempts = llm_judge.ask(
            lambda m: asked.append(m) or next(replies), [{"role": "user", "content": "?"}], parse, 2
        )
        assert parsed["choice"] == "b" and attempts == ["A is better.", answer("B", 2)]
        assert asked[1][-2] == {"role": "assistant", "content": "A is better."}
        assert (
            asked[1][-1]["role"] == "user" and "could not be read: it is not one JSON object" in asked[1][-1]["content"]
        )

    def test_after_the_retries_it_is_a_failure_with_every_attempt(self, project):
        asked = []
        parse = lambda text: llm_judge.parse(text, project, pairwise(), [0, 1])  # noqa: E731
        with pytest.raises(NoAnswer, match="no valid answer after 3 attempts; the last: it is empty") as failed:
            llm_judge.ask(lambda m: asked.append(m) or ["x", "y", ""][len(asked) - 1], [], parse, 2)
        assert failed.value.attempts == ["x", "y", ""] and len(asked) == 3


def first_picker(messages):
    """A judge that always prefers the response shown first: position bias, and nothing else."""
    return answer("A", 2)


def helpful_picker(messages):
    """A judge that prefers the response with *Helpful* in it, wherever it is shown."""
    shown_first = messages[-1]["content"].split("[Response A]\n")[1].split("[End of response A]")[0]
    return answer("A" if "Helpful" in shown_first else "B", 2)


class TestBothOrders:
    def test_a_judge_that_picks_whatever_is_shown_first_is_inconsistent_and_unsure(self, judge, project):
        verdict = llm_judge.judge_item(first_picker, judge, project, pairwise())
        assert verdict.answer == {"choice": "tie", "strength": None, "both_bad": False}
        assert verdict.consistent is False and verdict.confidence <= 0.5
        assert [order["shown"] for order in verdict.detail["orders"]] == [[11, 12], [12, 11]]
        assert [order["answer"]["choice"] for order in verdict.detail["orders"]] == ["a", "b"]
        assert verdict.detail["attempts"] == [answer("A", 2)] * 2

    def test_a_judge_that_follows_the_content_is_consistent_and_sure(self, judge, project):
        verdict = llm_judge.judge_item(helpful_picker, judge, project, pairwise())
        assert verdict.answer == {"choice": "a", "strength": 2, "both_bad": False}
        assert verdict.consistent is True and verdict.confidence == 1.0

    def test_a_failure_in_either_order_fails_the_task(self, judge, project):
        replies = iter([answer("A")] + ["no"] * 3)
        verdict = llm_judge.judge_item(lambda m: next(replies), judge, project, pairwise())
        assert verdict.answer is None and "no valid answer after 3 attempts" in verdict.error
        assert verdict.detail["attempts"] == [answer("A"), "no", "no", "no"]

    def test_a_rating_is_asked_once_its_confidence_unknown(self, judge, project):
        asked = []
        reply = lambda m: asked.append(m) or '{"score": 5, "labels": []}'  # noqa: E731
        verdict = llm_judge.judge_item(reply, judge, project, rating())
        assert verdict.answer == {"score": 5, "labels": []} and len(asked) == 1
        assert verdict.confidence is None and verdict.consistent is None

    def test_a_ranking_is_asked_reversed(self, judge, project):
        replies = iter(['{"ranking": [[1], [2], [3]]}', '{"ranking": [[3], [2], [1]]}'])
        verdict = llm_judge.judge_item(lambda m: next(replies), judge, project, ranking())
        assert verdict.answer == {"ranking": [[21], [22], [23]]}
        assert verdict.consistent is True and verdict.confidence == 1.0


def side(choice, strength=1, both_bad=False):
    return {"choice": choice, "strength": None if choice == "tie" else strength, "both_bad": both_bad}


class TestCombine:
    @pytest.mark.parametrize(
        ("first", "second", "answer", "confidence", "consistent"),
        [
            (side("a", 2), side("a", 2), side("a", 2), 1.0, True),
            (side("a", 2), side("a", 1), side("a", 1), 0.875, True),
            (side("b", 1), side("b", 1), side("b", 1), 0.75, True),
            (side("tie"), side("tie"), side("tie"), 0.5, True),
            (side("a", 2), side("tie"), side("tie"), 0.25, False),
            (side("a", 2), side("b", 1), side("tie"), 0.125, False),
            (side("a", 1), side("b", 1), side("tie"), 0.0, False),
            (side("a", 1, True), side("a", 1, True), side("a", 1, True), 0.75, True),
            (side("a", 1, True), side("a", 1), side("a", 1), 0.75, True),
        ],
    )
    def test_pairwise(self, first, second, answer, confidence, consistent):
        assert llm_judge.combine_pairwise(first, second) == (answer, confidence, consistent)

    def test_disagreement_is_never_above_half_agreement_never_below(self):
        answers = [side("a", 2), side("a", 1), side("tie"), side("b", 1), side("b", 2)]
        for first in answers:
            for second in answers:
                _, confidence, consistent = llm_judge.combine_pairwise(first, second)
                assert confidence >= 0.5 if consistent else confidence <= 0.5

    def test_rankings_merge_by_mean_rank(self):
        same = llm_judge.combine_rankings({"ranking": [[1], [2], [3]]}, {"ranking": [[1], [2], [3]]})
        assert same == ({"ranking": [[1], [2], [3]]}, 1.0, True)
        top_swapped = llm_judge.combine_rankings({"ranking": [[1], [2], [3]]}, {"ranking": [[2], [1], [3]]})
        assert top_swapped == ({"ranking": [[1, 2], [3]]}, pytest.approx(1 / 3), False)
        tail_swapped = llm_judge.combine_rankings({"ranking": [[1], [2], [3]]}, {"ranking": [[1], [3], [2]]})
        assert tail_swapped == ({"ranking": [[1], [2, 3]]}, pytest.approx(0.5 + 1 / 3), True)
        all_tied = llm_judge.combine_rankings({"ranking": [[1, 2]]}, {"ranking": [[1, 2]]})
        assert all_tied == ({"ranking": [[1, 2]]}, 0.5, True)


class TestRateLimit:
    def test_requests_go_out_evenly_spaced_whatever_the_threads(self):
        slept, lock = [], threading.Lock()

        def sleep(seconds):
            with lock:
                slept.append(seconds)

        limit = RateLimit(120, clock=lambda: 100.0, sleep=sleep)  # the clock stands still: every wait queues
        threads = [threading.Thread(target=limit.wait) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(slept) == [0.5 * n for n in range(1, 8)]  # the first went at once; each next 0.5 s later

    def test_time_that_passed_is_not_waited_again(self):
        now, slept = [0.0], []
        limit = RateLimit(60, clock=lambda: now[0], sleep=slept.append)
        limit.wait()
        now[0] = 5.0
        limit.wait()
        now[0] = 5.25
        limit.wait()
        assert slept == [0.75]

    def test_one_limit_per_judge_across_a_runs_batches(self, judge):
        judge.pk, judge.requests_per_minute = 7, 60
        assert llm_judge.rate_limit(judge) is llm_judge.rate_limit(judge)
        judge.requests_per_minute = 30  # edited: the new rate applies
        assert llm_judge.rate_limit(judge).interval == 2.0

    def test_no_limit_never_waits(self):
        limit = RateLimit(0, sleep=lambda seconds: pytest.fail("waited"))
        for _ in range(100):
            limit.wait()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


class TestEndpoint:
    def test_a_missing_api_key_is_named_before_any_request(self, judge, monkeypatch):
        judge.api_key_env = "ARBITER_TEST_JUDGE_KEY"
        monkeypatch.delenv("ARBITER_TEST_JUDGE_KEY", raising=False)
        with pytest.raises(LLMJudgeError, match="the environment variable ARBITER_TEST_JUDGE_KEY is not set"):
            next(llm_judge.judge_items(judge, [pairwise()], should_stop=lambda: False))
        monkeypatch.setenv("ARBITER_TEST_JUDGE_KEY", "secret")
        assert llm_judge.client_for(judge).api_key == "secret"

    def test_a_stop_asked_before_the_first_item_sends_nothing(self, judge):
        judge.endpoint = closed_port_url()  # a request would fail the run
        assert list(llm_judge.judge_items(judge, [pairwise(1), pairwise(2)], should_stop=lambda: True)) == []

    def test_an_unreachable_endpoint_ends_the_run_naming_it(self, judge, monkeypatch):
        judge.endpoint = closed_port_url()
        monkeypatch.setattr(llm_judge, "CLIENT_RETRIES", 0)
        with pytest.raises(LLMJudgeError, match=f"endpoint {judge.endpoint} is unreachable"):
            list(llm_judge.judge_items(judge, [pairwise()], should_stop=lambda: False))


def test_the_judge_imports_no_training_library():
    # An LLM judge runs on the default-queue worker, whose image has no torch (docker/Dockerfile's app stage).
    code = (
        "import os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'arbiter.settings'); import django; "
        "django.setup(); import annotate.llm_judge, annotate.judges, annotate.tasks; "
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'transformers', 'peft', 'trl'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
