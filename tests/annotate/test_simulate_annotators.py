"""Simulated annotators: the rules' answers, the noise, and bots working a project through the real HTTP API."""

import random
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.throttling import ScopedRateThrottle

from annotate.models import Annotation, ApiToken, Membership, Prompt, Response, Task, TaskResponse
from annotate.serializers import AnswerIn, LeaseSerializer
from annotate.simulation import answer, check_profile, check_rule, feature, random_answer, rating_score, rule_answer

SCALE = [1, 2, 3, 4, 5]


def payload(kind: str, *texts: str, scale: list[int] = SCALE, labels: tuple[str, ...] = ()) -> dict:
    """A lease as the next-task endpoint shows it (only the parts a bot reads), responses in displayed order."""
    fields = {
        "rating": [{"name": "score", "choices": scale}, {"name": "labels", "choices": list(labels)}],
        "pairwise": [{"name": "preference", "choices": ["a2", "a1", "tie", "b1", "b2"]}],
        "ranking": [{"name": "ranks", "choices": list(range(1, len(texts) + 1))}],
        "write": [{"name": "text", "choices": []}],
    }[kind]
    responses = [{"letter": chr(65 + i), "id": 100 + i, "content": text} for i, text in enumerate(texts)]
    return {"kind": kind, "responses": responses, "answer_fields": fields, "submit_url": "/unused/"}


# Rules ----------------------------------------------------------------------------------------------------------


def test_word_feature_counts_whole_words_whatever_their_case():
    assert feature("Cat, cat! CAT? cats concat scat cat_x", "word:cat") == 3
    assert feature("No felines here.", "word:cat") == 0


def test_length_features_count_characters():
    assert feature("héllo", "shorter") == feature("héllo", "longer") == 5


@pytest.mark.parametrize("rule", ["word:", "word:two words", "word", "short", "Longer", "word:a.b"])
def test_unknown_rules_are_refused(rule):
    with pytest.raises(ValueError, match="Unknown rule"):
        check_rule(rule)


@pytest.mark.parametrize(
    ("texts", "rule", "preference"),
    [
        (("a cat", "cat cat cat"), "word:cat", "b2"),  # 1 vs 3: two apart is much better
        (("cat cat", "a cat"), "word:cat", "a1"),
        (("Cat.", "a CAT"), "word:cat", "tie"),
        (("dog", "bird"), "word:cat", "tie"),
        (("x" * 10, "x" * 19), "longer", "b1"),
        (("x" * 10, "x" * 20), "longer", "b2"),  # twice as long is much better
        (("x" * 10, "x" * 20), "shorter", "a2"),
        (("x" * 15, "x" * 10), "shorter", "b1"),
        (("same", "size"), "shorter", "tie"),
    ],
)
def test_pairwise_prefers_the_displayed_side_the_rule_favours(texts, rule, preference):
    assert rule_answer(payload("pairwise", *texts), rule) == {"preference": preference}


def test_ranking_orders_by_the_feature_and_ties_equal_features():
    lease = payload("ranking", "cat", "cat cat", "dog", "CAT and cat")
    assert rule_answer(lease, "word:cat") == {"ranks": {"100": 2, "101": 1, "102": 3, "103": 1}}
    assert rule_answer(payload("ranking", "ccc", "a", "bb"), "shorter") == {"ranks": {"100": 3, "101": 1, "102": 2}}
    assert rule_answer(payload("ranking", "ccc", "a", "bb"), "longer") == {"ranks": {"100": 1, "101": 3, "102": 2}}


def test_a_write_task_gets_the_draft_or_a_sentence_with_the_rules_word_even_from_a_spammer():
    spammer = check_profile("spammer")
    assert answer(payload("write", "The draft."), "word:cat", 0.0, random.Random(0), spammer).body == {
        "text": "The draft."
    }
    assert answer(payload("write"), "word:cat", 1.0, random.Random(0)).body == {"text": "An answer with cat."}


def test_word_rating_goes_one_point_up_per_occurrence_capped_at_the_top():
    assert [rating_score(" cat" * n, "word:cat", SCALE) for n in range(7)] == [1, 2, 3, 4, 5, 5, 5]
    assert rating_score("cat cat", "word:cat", [-2, -1, 0, 1, 2]) == 0
    assert rule_answer(payload("rating", "Cat cat cat"), "word:cat") == {"score": 4}


def test_length_ratings_go_by_bands_that_double():
    lengths = [0, 49, 50, 99, 100, 199, 200, 399, 400, 5000]
    assert [rating_score("x" * n, "longer", SCALE) for n in lengths] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [rating_score("x" * n, "shorter", SCALE) for n in lengths] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert rating_score("x" * 120, "longer", list(range(0, 11))) == 2


def test_without_noise_every_answer_follows_the_rule():
    rng = random.Random(0)
    lease = payload("pairwise", "cat", "dog")
    assert all(answer(lease, "word:cat", 0, rng) == ({"preference": "a1"}, "rule") for _ in range(50))


def test_with_full_noise_every_answer_is_random():
    rng = random.Random(0)
    lease = payload("pairwise", "cat", "dog")
    answers = [answer(lease, "word:cat", 1, rng) for _ in range(200)]
    assert {how for _, how in answers} == {"random"}
    assert {body["preference"] for body, _ in answers} == {"a2", "a1", "tie", "b1", "b2"}


@pytest.mark.parametrize("text", ["careful", "spammer", "fast", "position:0.9", "length:1"])
def test_profiles_are_read_back_as_written(text):
    assert str(check_profile(text)) == text


@pytest.mark.parametrize("text", ["position", "position:0", "position:1.5", "length:x", "lazy", "spammer:0.5"])
def test_unknown_profiles_are_refused(text):
    with pytest.raises(ValueError, match="Unknown profile"):
        check_profile(text)


def test_a_spammer_answers_at_random_whatever_the_noise():
    rng = random.Random(0)
    answers = [
        answer(payload("pairwise", "cat", "dog"), "word:cat", 0, rng, check_profile("spammer")) for _ in range(200)
    ]
    assert {how for _, how in answers} == {"random"}
    assert {body["preference"] for body, _ in answers} == {"a2", "a1", "tie", "b1", "b2"}


def test_a_position_biased_bot_prefers_what_it_was_shown_first_as_often_as_its_p():
    rng = random.Random(0)
    lease = payload("pairwise", "dog", "cat")  # the rule prefers B
    answers = [answer(lease, "word:cat", 0, rng, check_profile("position:0.8")) for _ in range(1000)]
    first = sum(body["preference"] == "a1" for body, _ in answers)
    assert 740 <= first <= 860  # 800 expected; 4 standard deviations either way
    assert all(body["preference"] == ("a1" if how == "bias" else "b1") for body, how in answers)
    ranking = payload("ranking", "dog", "cat cat", "cat")  # the rule: B, C, A
    body, how = answer(ranking, "word:cat", 0, random.Random(0), check_profile("position:1"))
    assert (how, body["ranks"]) == ("bias", {"100": 1, "101": 2, "102": 3})


def test_a_length_biased_bot_prefers_the_longer_response_and_has_no_say_between_equal_lengths():
    rng = random.Random(0)
    profile = check_profile("length:1")
    assert answer(payload("pairwise", "cat", "a dog"), "word:cat", 0, rng, profile) == ({"preference": "b1"}, "bias")
    assert answer(payload("pairwise", "cat", "dog"), "word:cat", 0, rng, profile) == ({"preference": "a1"}, "rule")
    assert answer(payload("rating", "dog"), "word:cat", 0, rng, profile).how == "rule"


def test_random_answers_cover_the_form():
    rng = random.Random(1)
    ratings = [random_answer(payload("rating", "x", labels=("rude", "wrong")), rng) for _ in range(200)]
    assert {r["score"] for r in ratings} == set(SCALE)
    assert {tuple(r["labels"]) for r in ratings} == {(), ("rude",), ("wrong",), ("rude", "wrong")}
    ranks = [random_answer(payload("ranking", "x", "y", "z"), rng)["ranks"] for _ in range(200)]
    assert {rank for r in ranks for rank in r.values()} == {1, 2, 3}
    assert any(len(set(r.values())) < 3 for r in ranks)  # ties happen


@pytest.fixture
def make_task(project):
    """A task of `kind` over fresh responses with these texts (positions 0, 1, …), on its own prompt."""

    def make(kind: str, *texts: str) -> Task:
        messages = [{"role": "user", "content": "?"}]
        prompt = Prompt.objects.create(project=project, external_id=f"p{Prompt.objects.count()}", messages=messages)
        task = Task.objects.create(project=project, prompt=prompt, kind=kind, required_annotations=project.overlap)
        for position, text in enumerate(texts):
            TaskResponse.objects.create(
                task=task, response=Response.objects.create(prompt=prompt, content=text), position=position
            )
        return task

    return make


def test_random_answers_to_real_leases_are_accepted(project, annotator, make_task):
    # The real lease shapes, and the API's own path from a submit body to clean_answer.
    make_task("rating", "a")
    make_task("pairwise", "a", "b")
    make_task("ranking", "a", "b", "c", "d")
    rng = random.Random(2)
    for _ in range(3):
        lease = project.next_assignment(annotator)
        shown = LeaseSerializer(lease).data
        for _ in range(100):
            body = answer(shown, "word:cat", 1, rng).body
            submitted = AnswerIn(data=body)
            assert submitted.is_valid(), submitted.errors
            lease.task.clean_answer(lease.answer_from_shown(submitted.validated_data))
        lease.submit(lease.answer_from_shown(submitted.validated_data), user=annotator)


# Bots through the real API -------------------------------------------------------------------------------------


def expected(task: Task) -> dict:
    """What a bot with rule word:cat must have stored, in the task's positions (as annotations store answers)."""
    counts = [feature(link.response.content, "word:cat") for link in task.task_responses.select_related("response")]
    if task.kind == "rating":
        return {"score": min(1 + counts[0], 5)}
    if task.kind == "pairwise":
        a, b = counts
        if a == b:
            return {"choice": "tie", "strength": None}
        return {"choice": "a" if a > b else "b", "strength": 2 if abs(a - b) >= 2 else 1}
    ids = task.response_ids()
    by_count = sorted(set(counts), reverse=True)
    return {"ranking": [sorted(i for i, c in zip(ids, counts, strict=True) if c == count) for count in by_count]}


@pytest.mark.django_db(transaction=True)
def test_bots_annotate_every_task_by_the_rule_through_the_api(project, make_task, monkeypatch):
    # A tight submit rate: the bots must wait out the 429s, not fail on them.
    monkeypatch.setitem(ScopedRateThrottle.THROTTLE_RATES, "submit", "2/s")
    # Every lease shows its responses in reverse: a bot that took A for the task's first response would get every
    # pairwise answer wrong.
    monkeypatch.setattr("annotate.models.random.shuffle", list.reverse)
    tasks = [
        make_task("rating", "No felines."),
        make_task("rating", "cat CAT cat"),
        make_task("pairwise", "a cat", "cat, cat and cat"),  # B much better
        make_task("pairwise", "cat cat", "one cat"),  # A better
        make_task("pairwise", "Cat!", "cat?"),  # tie
        make_task("ranking", "cat cat", "dog", "cat and cat", "cat"),
    ]
    out = StringIO()

    call_command("simulate_annotators", project=project.slug, users=2, rule="word:cat", noise=0, seed=7, stdout=out)

    summary = out.getvalue()
    assert "answered 12 tasks: pairwise 6, ranking 2, rating 4" in summary
    assert "by the rule 12, at random (noise or spammers) 0, by a bias 0" in summary
    assert "errors 0" in summary
    assert "throttled (429) 0 times" not in summary
    assert "each waited out as Retry-After said" in summary
    bots = set(get_user_model().objects.filter(username__startswith="sim-helpfulness-"))
    assert {bot.username for bot in bots} == {"sim-helpfulness-1", "sim-helpfulness-2"}
    for task in tasks:
        task.refresh_from_db()
        assert (task.status, task.annotation_count) == (Task.Status.COMPLETE, 2)
        annotations = task.annotations.select_related("annotator", "assignment")
        assert {a.annotator for a in annotations} == bots
        for annotation in annotations:
            assert annotation.source == Annotation.Source.HUMAN
            assert annotation.assignment.shown_order == task.response_ids()[::-1]  # made on a lease, as the API does
            stored = {key: getattr(annotation, key) for key in expected(task)}
            assert stored == expected(task), f"{task} shown as {annotation.assignment.shown_order}"
    # Each bot authenticated with a token of its own, revoked when the run ended.
    tokens = ApiToken.objects.filter(user__in=bots)
    assert tokens.count() == 2
    assert all(t.last_used_at and t.revoked_at for t in tokens)

    # A second run reuses the bots, finds nothing left, and says so.
    out = StringIO()
    call_command("simulate_annotators", project=project.slug, users=2, rule="word:cat", stdout=out)
    assert "answered 0 tasks" in out.getvalue()
    assert Membership.objects.filter(project=project, user__username__startswith="sim-").count() == 2


def test_a_bot_whose_client_cannot_be_made_is_reported_and_fails_the_run(project):
    out = StringIO()

    with pytest.raises(CommandError, match="Bots failed: 2"):
        call_command("simulate_annotators", project=project.slug, users=2, rule="longer", url="http://h:x", stdout=out)

    assert "sim-helpfulness-1: ValueError: Port could not be cast to integer value" in out.getvalue()
    assert all(token.revoked_at for token in ApiToken.objects.filter(name="simulate_annotators"))


@pytest.mark.django_db(transaction=True)
def test_bots_work_under_production_settings(project, make_task, settings):
    # DEBUG off: every plain-HTTP request is redirected to HTTPS, and only the site's own host name is allowed.
    settings.DEBUG = False
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["arbiter.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    make_task("pairwise", "a cat", "no felines")
    out = StringIO()

    call_command("simulate_annotators", project=project.slug, users=2, rule="word:cat", stdout=out)

    assert "answered 2 tasks" in out.getvalue()
    assert "errors 0" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_profiles_through_the_api_and_the_server_measures_who_took_their_time(project, make_task):
    project.overlap = 3
    project.save()
    for n in range(3):
        make_task("pairwise", f"cat {n}", "no felines")
    out = StringIO()

    call_command(
        "simulate_annotators",
        project=project.slug,
        users=3,
        rule="word:cat",
        profile=["spammer=1", "fast=1"],
        think=0.3,
        seed=3,
        stdout=out,
    )

    summary = out.getvalue()
    assert "bots: 3 (careful 1, fast 1, spammer 1)" in summary
    assert "sim-helpfulness-1: spammer" in summary and "sim-helpfulness-2: fast" in summary
    assert "answered 9 tasks" in summary
    spent = {
        name: [a.time_spent.total_seconds() for a in Annotation.objects.filter(annotator__username=name)]
        for name in ("sim-helpfulness-1", "sim-helpfulness-2", "sim-helpfulness-3")
    }
    # The think time, server-measured: a careful bot and a spammer take it (a slow spammer is still a spammer, caught
    # by what it answers); only the fast one does not.
    assert all(seconds >= 0.3 for seconds in spent["sim-helpfulness-1"] + spent["sim-helpfulness-3"])
    assert all(seconds < 0.3 for seconds in spent["sim-helpfulness-2"])
    careful = Annotation.objects.filter(annotator__username="sim-helpfulness-3")
    assert {(a.choice, a.strength) for a in careful} == {("a", 1)}  # by the rule: the cat side


@pytest.mark.parametrize(
    "profile, message", [(["spammer=4"], "more than --users 3"), (["spammer"], "PROFILE=N"), (["lazy=1"], "Unknown")]
)
def test_bad_profiles_are_refused(project, profile, message):
    with pytest.raises(CommandError, match=message):
        call_command("simulate_annotators", project=project.slug, users=3, rule="longer", profile=profile)
