"""The loop works: simulated annotators who prefer a word, one DPO round on their votes, and the new policy's
samples use the word more often than the old one's, by a one-sided two-proportion z-test at p < 0.01."""

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


def satisfied(texts: list[str]) -> int:
    return sum(feature(text, RULE) > 0 for text in texts)


def one_sided_p(after: int, before: int, n: int) -> float:
    """P(Z >= z) for the difference of two proportions of n each, pooled (after > before is the alternative)."""
    pooled = (after + before) / (2 * n)
    z = (after - before) / n / math.sqrt(2 * pooled * (1 - pooled) / n)
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.django_db(transaction=True)
def test_one_dpo_round_on_simulated_votes_makes_the_rule_more_often_satisfied(tmp_path):
    policy_path = build_demo_policy(tmp_path / "demo")
    project = Project.objects.create(
        name="Efficacy", slug="efficacy", task_kinds=["pairwise"], overlap=1, samples_per_prompt=4, sample_prompts=150
    )
    for number, messages in enumerate(demo_prompts(170, seed=7)):
        split = "eval" if number < 20 else "train"
        Prompt.objects.create(project=project, external_id=f"q{number}", messages=messages, split=split)
    base = ModelVersion.register(project=project, kind="policy", base_model=str(policy_path))
    base.promote()
    sample_into_queue(project, base, round_number=0, config=SampleConfig(max_new_tokens=40, seed=1))

    result = simulate_annotators(project=project, users=4, rule=RULE, noise=0.1, seed=3)
    assert not result.tally.errors and sum(result.tally.answered.values()) >= 150, result.summary()

    training_round = run_round(launch_round(project, method="dpo", settings_=DPO).pk)
    assert training_round.status == "succeeded", training_round.error
    new = ModelVersion.objects.get(training_round=training_round)
    assert new.parent == base

    # The same held-out prompts, the same sampling, before and after.
    prompts = [p.messages for p in Prompt.objects.filter(project=project, split="eval").order_by("id")]
    options = {"num_samples": 16, "max_new_tokens": 40, "batch_size": 64, "seed": 11}
    before = [text for texts in generate(base.path, prompts, **options) for text in texts]
    after = [text for texts in generate(new.path, prompts, **options) for text in texts]
    n = len(before)
    p = one_sided_p(satisfied(after), satisfied(before), n)
    assert satisfied(after) > satisfied(before) and p < 0.01, (satisfied(before), satisfied(after), n, p)

    # The round's new samples came back as tasks: eval pairs of the new policy against the old.
    eval_pairs = Response.objects.filter(model_version=new, prompt__split="eval", tasks__round_number=1)
    assert eval_pairs.count() == 20
    simulate_annotators(project=project, users=4, rule=RULE, noise=0.0, seed=4)
    measured = win_rate(project, new, base)
    assert measured.n == 20 and measured.rate > 0.5, measured
