"""The loop works: simulated annotators who prefer a word, one round on what they said, and the new policy's samples
use the word more often than the old one's, by a one-sided two-proportion z-test at p < 0.01. DPO learns from their
votes on pairs; KTO from their ratings alone (thumbs up or down on single answers, no pair anywhere)."""

import math

import pytest

from annotate.models import Project, Prompt, Response
from annotate.simulation import feature, simulate_annotators
from models_registry.measures import win_rate
from models_registry.models import ModelVersion
from training.engine.config import SampleConfig
from training.engine.demo import build_demo_policy, demo_prompts
from training.engine.generate import generate
from training.rounds import launch_round, run_round
from training.sampling import sample_into_queue

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

RULE = "word:thanks"
DPO = {
    "use_lora": "false",  # the tiny model learns faster whole (and the reference is then a frozen copy)
    "learning_rate": "5e-4",
    "num_train_epochs": "3",
    "per_device_batch_size": "8",
    "max_length": "96",
    "beta": "0.1",
    "eval_fraction": "0",
    "sample.max_new_tokens": "40",
}
# DPO's settings; λ_D 3 because about one sample in five says "thanks", and KTO wants λ_D·desirable ≳ λ_U·undesirable.
KTO = {**DPO, "desirable_weight": "3"}
MEASURE = {"num_samples": 16, "max_new_tokens": 40, "batch_size": 64, "seed": 11}  # the same for before and after


@pytest.fixture(scope="module")
def demo_policy(tmp_path_factory):
    return build_demo_policy(tmp_path_factory.mktemp("demo"))


def satisfied(texts: list[str]) -> int:
    return sum(feature(text, RULE) > 0 for text in texts)


def one_sided_p(after: int, before: int, n: int) -> float:
    """P(Z >= z) for the difference of two proportions of n each, pooled (after > before is the alternative)."""
    pooled = (after + before) / (2 * n)
    z = (after - before) / n / math.sqrt(2 * pooled * (1 - pooled) / n)
    return 0.5 * math.erfc(z / math.sqrt(2))


def sampled_project(policy_path, **fields) -> tuple[Project, ModelVersion]:
    """20 eval and 150 train demo prompts, the demo policy registered and sampled into the queue (round 0)."""
    project = Project.objects.create(name="Efficacy", slug="efficacy", overlap=1, sample_prompts=150, **fields)
    for number, messages in enumerate(demo_prompts(170, seed=7)):
        split = "eval" if number < 20 else "train"
        Prompt.objects.create(project=project, external_id=f"q{number}", messages=messages, split=split)
    base = ModelVersion.register(project=project, kind="policy", base_model=str(policy_path))
    base.promote()
    sample_into_queue(project, base, round_number=0, config=SampleConfig(max_new_tokens=40, seed=1))
    return project, base


def rule_satisfied(project: Project, before: ModelVersion, after: ModelVersion) -> tuple[int, int, int, float]:
    """Samples satisfying the rule before and after on the held-out prompts, out of n each, and the test's p."""
    prompts = [p.messages for p in Prompt.objects.filter(project=project, split="eval").order_by("id")]
    k_before, k_after = (
        satisfied([text for texts in generate(version.path, prompts, **MEASURE) for text in texts])
        for version in (before, after)
    )
    n = len(prompts) * MEASURE["num_samples"]
    return k_before, k_after, n, one_sided_p(k_after, k_before, n)


@pytest.mark.django_db(transaction=True)
def test_one_dpo_round_on_simulated_votes_makes_the_rule_more_often_satisfied(demo_policy):
    project, base = sampled_project(demo_policy, task_kinds=["pairwise"], samples_per_prompt=4)

    result = simulate_annotators(project=project, users=4, rule=RULE, noise=0.1, seed=3)
    assert not result.tally.errors and sum(result.tally.answered.values()) >= 150, result.summary()

    training_round = run_round(launch_round(project, method="dpo", settings_=DPO).pk)
    assert training_round.status == "succeeded", training_round.error
    new = ModelVersion.objects.get(training_round=training_round)
    assert new.parent == base

    before, after, n, p = rule_satisfied(project, base, new)
    assert after > before and p < 0.01, (before, after, n, p)

    # The round's new samples came back as tasks: eval pairs of the new policy against the old.
    eval_pairs = Response.objects.filter(model_version=new, prompt__split="eval", tasks__round_number=1)
    assert eval_pairs.count() == 20
    simulate_annotators(project=project, users=4, rule=RULE, noise=0.0, seed=4)
    measured = win_rate(project, new, base)
    assert measured.n == 20 and measured.rate > 0.5, measured


@pytest.mark.django_db(transaction=True)
def test_one_kto_round_on_simulated_ratings_alone_makes_the_rule_more_often_satisfied(demo_policy):
    # Thumbs down (0) or up (1): the bots rate 1 an answer that says the word (annotate/simulation.py rating_score),
    # and the unpaired export calls an answer desirable when its mean rating is above the midpoint.
    project, base = sampled_project(
        demo_policy, task_kinds=["rating"], sample_rating_tasks=True, rating_min=0, rating_max=1, samples_per_prompt=1
    )

    result = simulate_annotators(project=project, users=4, rule=RULE, noise=0.1, seed=3)
    assert not result.tally.errors and set(result.tally.answered) == {"rating"}, result.summary()

    training_round = run_round(launch_round(project, method="kto", settings_=KTO).pk)
    assert training_round.status == "succeeded", training_round.error
    new = ModelVersion.objects.get(training_round=training_round)
    assert new.parent == base and training_round.snapshot.kind == "unpaired"

    before, after, n, p = rule_satisfied(project, base, new)
    # A clear margin, not only significance: at least 10 points up from the base's 15-20 %.
    assert after > before + n // 10 and p < 0.01, (before, after, n, p)
