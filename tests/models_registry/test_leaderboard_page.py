"""The lead's models page: leaderboard, round win rates, reward model accuracy and the registry, for leads only."""

import re

import pytest
from django.urls import reverse

from models_registry.models import ModelVersion
from training.models import TrainingRound

pytestmark = pytest.mark.django_db


def url(project):
    return reverse("model_leaderboard", args=[project.slug])


@pytest.fixture
def rounds(project, policy, add_votes):
    """Round 1 trained policy v1 from the base model and reward v1; round 2 trained policy v2 from v1."""
    first = TrainingRound.objects.create(project=project, number=1, method="ppo", base_model="tiny")
    second = TrainingRound.objects.create(project=project, number=2, method="dpo", base_model="tiny")
    ModelVersion.register(
        project=project,
        kind="reward",
        base_model="tiny",
        training_round=first,
        eval_report={"accuracy": 0.875, "human_eval_accuracy": 0.8, "eval_pairs": 40},
    )
    v1 = policy(training_round=first)
    v2 = policy(training_round=second, parent=v1)
    v2.promote()
    add_votes([(v2, v1, "a")] * 3 + [(v1, v2, "tie")] + [(v1, None, "a")] * 2)
    return first, second


def test_a_lead_sees_the_leaderboard_round_win_rates_reward_accuracy_and_registry(client, lead, project, rounds):
    client.force_login(lead)
    page = client.get(url(project)).content.decode()

    leaderboard = page.split('id="leaderboard"')[1].split("</table>")[0]
    names = re.findall(r"<td>(policy v\d|reference data)", leaderboard)
    assert names == ["policy v2", "policy v1", "reference data"]
    assert "(active)" in leaderboard and "3 / 1 / 0" in leaderboard  # v2: 3 wins, 1 tie, no loss

    round_rows = page.split('id="round-win-rates"')[1].split("</table>")[0]
    assert reverse("round_page", args=[project.slug, 2]) in round_rows
    assert "88 %" in round_rows and "3 / 1 / 0 of 4" in round_rows  # (3 + 1/2) / 4 = 0.875

    rewards = page.split('id="reward-accuracy"')[1].split("</table>")[0]
    assert "reward v1" in rewards and "88 %" in rewards and "80 %" in rewards
    assert reverse("round_page", args=[project.slug, 1]) in rewards
    assert "not trained on ratings" in rewards

    registry = page.split('id="registry"')[1].split("</table>")[0]
    assert "Active" in registry and "policy v1</td>" in registry and "<code>tiny</code>" in registry
    assert "From 6 human votes" in page


def test_a_superuser_sees_it(client, project, make_user, rounds):
    client.force_login(make_user("root", is_superuser=True))
    assert client.get(url(project)).status_code == 200


def test_annotators_and_outsiders_get_404_and_anonymous_users_the_login(client, annotator, outsider, project):
    assert client.get(url(project))["Location"].startswith(reverse("login"))
    for user in (annotator, outsider):
        client.force_login(user)
        assert client.get(url(project)).status_code == 404


def test_an_empty_project_says_so(client, lead, project):
    client.force_login(lead)
    page = client.get(url(project)).content.decode()
    assert "No votes between different model versions yet." in page
    assert "Nothing registered yet" in page and "No reward models yet." in page


def test_the_project_page_links_it_for_leads_only(client, lead, annotator, project):
    client.force_login(lead)
    assert url(project) in client.get(reverse("project_detail", args=[project.slug])).content.decode()
    client.force_login(annotator)
    assert url(project) not in client.get(reverse("project_detail", args=[project.slug])).content.decode()


class TestPromote:
    def test_a_lead_promotes_a_version_from_the_page_after_confirming(self, client, lead, project, policy):
        first, second = policy(), policy()
        first.promote()
        client.force_login(lead)
        promote = reverse("promote_version", args=[project.slug, second.pk])
        page = client.get(url(project)).content.decode()
        assert f'href="{promote}"' in page
        assert reverse("promote_version", args=[project.slug, first.pk]) not in page  # already active

        confirm = client.get(promote).content.decode()
        assert f'action="{promote}"' in confirm and f"policy v{first.version}, active now, is archived" in confirm
        second.refresh_from_db()
        assert second.status == "candidate"  # the confirm page changes nothing

        done = client.post(promote, follow=True)
        assert done.redirect_chain == [(url(project), 302)]
        assert f"policy v{second.version} is now the active policy" in done.content.decode()
        assert dict(ModelVersion.objects.values_list("pk", "status")) == {first.pk: "archived", second.pk: "active"}

    def test_annotators_outsiders_and_other_projects_versions_get_404(
        self, client, lead, annotator, outsider, project, policy
    ):
        from annotate.models import Project

        version = policy()
        other_project = Project.objects.create(name="Other", slug="other")
        other = ModelVersion.register(project=other_project, kind="policy", base_model="tiny")
        for user in (annotator, outsider):
            client.force_login(user)
            assert client.get(reverse("promote_version", args=[project.slug, version.pk])).status_code == 404
            assert client.post(reverse("promote_version", args=[project.slug, version.pk])).status_code == 404
        client.force_login(lead)
        assert client.post(reverse("promote_version", args=[project.slug, other.pk])).status_code == 404
        assert client.post(reverse("promote_version", args=["other", other.pk])).status_code == 404
        assert not ModelVersion.objects.filter(status="active").exists()


def test_a_reward_model_trained_on_ratings_shows_its_rank_correlation(client, lead, project):
    report = {"rating_spearman": 0.714, "rating_pair_accuracy": 0.9, "eval_ratings": 24}
    ModelVersion.register(project=project, kind="reward", base_model="tiny", eval_report=report)
    client.force_login(lead)
    rewards = client.get(url(project)).content.decode().split('id="reward-accuracy"')[1].split("</table>")[0]
    assert "ρ 0.71" in rewards
