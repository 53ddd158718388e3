"""Launching from the admin and the command line, the lead's round pages, and promoting registry versions."""

import re
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from annotate.admin import project_leads_group
from annotate.models import DatasetSnapshot, Membership, Project, Response, Task, TaskResponse
from models_registry.models import ModelVersion
from tests.conftest import write_model_files
from training.charts import chart
from training.models import RoundMetric, TrainingRound
from training.rounds import _progress_callback, launch_round

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def staff_lead(lead):
    lead.groups.add(project_leads_group())
    return lead


def launch_url(project=None):
    url = reverse("admin:training_traininground_launch")
    return f"{url}?project={project.pk}" if project else url


class TestAdminLaunch:
    def test_the_form_lists_each_stages_settings_with_defaults(self, client, staff_lead, project):
        client.force_login(staff_lead)
        page = client.get(launch_url(project)).content.decode()
        assert re.search(rf'<option value="{project.pk}" selected>', page)
        for setting in ("kl_coef", "beta", "use_margin", "assistant_only_loss", "learning_rate"):
            assert f"<code>{setting}</code>" in page

    def test_a_bad_setting_is_refused_with_its_name_and_nothing_is_queued(self, client, staff_lead, project, base):
        client.force_login(staff_lead)
        form = {"project": project.pk, "method": "dpo", "base": base, "settings": "max_steps=10\nbeta=-1"}
        page = client.post(launch_url(), form)
        assert page.status_code == 200 and "dpo.beta" in page.content.decode()
        assert not TrainingRound.objects.exists() and not DatasetSnapshot.objects.exists()

    def test_a_settings_line_without_equals_names_its_line(self, client, staff_lead, project, base):
        client.force_login(staff_lead)
        form = {"project": project.pk, "method": "dpo", "base": base, "settings": "max_steps=10\nbeta 0.1"}
        assert "Line 2: expected key=value" in client.post(launch_url(), form).content.decode()
        assert not TrainingRound.objects.exists()

    def test_a_lead_cannot_launch_on_a_project_they_do_not_lead(self, client, staff_lead, base):
        other = Project.objects.create(name="Other", slug="other")
        client.force_login(staff_lead)
        page = client.post(launch_url(), {"project": other.pk, "method": "dpo", "base": base})
        assert page.status_code == 200 and "Select a valid choice" in page.content.decode()
        assert not TrainingRound.objects.exists()

    def test_a_path_outside_the_allowed_roots_is_refused_on_the_base_field(self, client, staff_lead, project, base):
        client.force_login(staff_lead)
        page = client.post(launch_url(), {"project": project.pk, "method": "dpo", "base": "/etc"})
        assert page.status_code == 200 and "base: Not a base this server allows" in page.content.decode()
        assert not TrainingRound.objects.exists()

    def test_a_folder_that_is_not_a_model_is_refused_on_the_base_field(self, client, staff_lead, project, base):
        Path(base, "tokenizer.json").unlink()
        Path(base, "tokenizer.model").write_bytes(b"")  # sentencepiece's: the workers cannot make it a fast one
        client.force_login(staff_lead)
        page = client.post(launch_url(), {"project": project.pk, "method": "dpo", "base": base}).content.decode()
        assert f"base: {base} is not a model a round can load: it has no fast tokenizer" in page
        assert not TrainingRound.objects.exists() and not DatasetSnapshot.objects.exists()

    def test_relaunching_a_round_whose_base_is_now_refused_relaunches_nothing(
        self, client, staff_lead, project, base, settings
    ):
        training_round = launch_round(project, method="dpo", base=base)
        training_round.request_cancel()
        settings.ARBITER_MODEL_ROOTS = []
        client.force_login(staff_lead)
        changelist = reverse("admin:training_traininground_changelist")
        page = client.post(changelist, {"action": "relaunch_rounds", "_selected_action": [training_round.pk]},
                           follow=True)  # fmt: skip
        assert "Nothing relaunched: Not a base this server allows" in page.content.decode()
        assert TrainingRound.objects.count() == 1

    def test_annotators_cannot_reach_the_launch_form(self, client, annotator, project):
        client.force_login(annotator)
        assert client.get(launch_url(project)).status_code == 302  # to the admin login

    def test_the_project_action_opens_the_launch_form_for_that_project(self, client, staff_lead, project):
        client.force_login(staff_lead)
        changelist = reverse("admin:annotate_project_changelist")
        page = client.post(changelist, {"action": "launch_training_round", "_selected_action": [project.pk]})
        assert page.status_code == 302 and page["Location"] == launch_url(project)

    def test_the_form_preselects_the_leads_only_project_or_the_one_named_by_slug(self, client, staff_lead, project):
        client.force_login(staff_lead)

        def selected(page):
            return re.search(r'<select name="project".*?<option value="(\d*)" selected>', page, re.S).group(1)

        assert selected(client.get(launch_url()).content.decode()) == str(project.pk)  # the only one

        second = Project.objects.create(name="Second", slug="second")
        Membership.objects.create(project=second, user=staff_lead, role=Membership.Role.LEAD)
        assert selected(client.get(launch_url()).content.decode()) == ""  # two: the lead chooses
        by_slug = client.get(launch_url() + "?project=second").content.decode()
        assert selected(by_slug) == str(second.pk)
        Project.objects.create(name="Not theirs", slug="not-theirs")
        assert selected(client.get(launch_url() + "?project=not-theirs").content.decode()) == ""

    def test_the_form_groups_what_to_train_the_data_and_the_settings(self, client, staff_lead, project):
        client.force_login(staff_lead)
        page = client.get(launch_url(project)).content.decode()
        order = ["What to train", 'id="id_project"', 'id="id_base"', "Which annotations", 'id="id_split"',
                 'id="id_min_agreement"', 'id="id_ratings_as_pairs"', "Stage settings", 'id="id_settings"']  # fmt: skip
        positions = [page.index(marker) for marker in order]
        assert positions == sorted(positions)
        # Each help text is tied to its field, for screen readers.
        assert 'aria-describedby="id_base_helptext"' in page and 'id="id_base_helptext"' in page

    def test_cancel_action_cancels_a_queued_round(self, client, staff_lead, project, base):
        training_round = launch_round(project, method="dpo", base=base)
        client.force_login(staff_lead)
        changelist = reverse("admin:training_traininground_changelist")
        client.post(changelist, {"action": "cancel", "_selected_action": [training_round.pk]})
        assert TrainingRound.objects.get().status == "cancelled"


class TestRoundPage:
    def url(self, training_round):
        return reverse("round_page", args=[training_round.project.slug, training_round.number])

    def test_a_running_round_polls_and_shows_progress_charts_and_log(self, client, lead, project, base):
        training_round = launch_round(project, method="dpo", base=base)
        training_round.claim()
        training_round.beat(stage="dpo", step=2, total_steps=4, progress=0.5, log_tail="dpo step 2/4: loss 0.6")
        for step, loss in ((1, 0.69), (2, 0.6)):
            RoundMetric.objects.create(training_round=training_round, stage="dpo", step=step, values={"loss": loss})
        client.force_login(lead)

        page = client.get(self.url(training_round)).content.decode()
        assert 'hx-trigger="every 2s"' in page and 'value="50"' in page
        assert "Training the policy (DPO): 2 of 4 steps" in page
        assert "dpo/loss" in page and "<polyline" in page and "dpo step 2/4: loss 0.6" in page
        assert "Cancel round" in page

        region = client.get(self.url(training_round), **HTMX).content.decode()
        assert region.lstrip().startswith('<section id="live"') and "<html" not in region

    def test_the_ppo_kl_chart_draws_its_target_and_stop_limit_and_beta_has_a_chart(self, client, lead, project, base):
        training_round = launch_round(
            project, method="ppo", base=base, settings_={"ppo.kl_target": "2", "ppo.kl_stop": "3"}
        )
        training_round.claim()
        for step, kl in ((1, 0.0), (2, 1.5)):
            RoundMetric.objects.create(
                training_round=training_round, stage="ppo", step=step, values={"kl": kl, "beta": 0.05}
            )
        client.force_login(lead)

        response = client.get(self.url(training_round))
        charts = {chart["name"]: chart for chart in response.context["charts"]}
        kl = charts["ppo/kl"]
        assert [(line["label"], line["value"]) for line in kl["lines"]] == [("target", 2.0), ("stop", 6.0)]
        assert kl["high"] == 6.0  # the lines are inside the chart even while the KL is below them
        assert "ppo/beta" in charts
        page = response.content.decode()
        assert 'class="chart-line chart-line-target"' in page and "dashed: target 2" in page

    def test_a_round_that_stopped_on_kl_shows_its_warning(self, client, lead, project, base):
        training_round = launch_round(project, method="ppo", base=base)
        training_round.claim()
        training_round.warn("PPO stopped at step 7: its KL to the reference stayed above 9 nats per response.")
        training_round.finish(TrainingRound.Status.SUCCEEDED)
        client.force_login(lead)
        page = client.get(self.url(training_round)).content.decode()
        assert 'id="round-warning"' in page and "PPO stopped at step 7" in page and "Succeeded" in page

    def test_a_finished_round_stops_polling_and_shows_how_long_it_ran(self, client, lead, project, base):
        training_round = launch_round(project, method="dpo", base=base)
        training_round.request_cancel()
        started = timezone.now() - timedelta(hours=10, minutes=3, seconds=4.4)
        TrainingRound.objects.filter(pk=training_round.pk).update(started_at=started, finished_at=timezone.now())
        client.force_login(lead)
        region = client.get(self.url(training_round), **HTMX).content.decode()
        assert "Cancelled" in region and "hx-trigger" not in region and "Cancel round" not in region
        assert "· 10:03:04" in region

    def test_cancel_is_a_link_to_a_confirm_page_that_cancels_on_post(self, client, lead, project, base):
        training_round = launch_round(project, method="dpo", base=base)
        training_round.claim()
        client.force_login(lead)
        cancel = reverse("cancel_round", args=[project.slug, training_round.number])
        page = client.get(self.url(training_round)).content.decode()
        assert f'href="{cancel}"' in page and f'action="{cancel}"' not in page  # a slip does not cancel

        confirm = client.get(cancel)
        assert confirm.status_code == 200 and f'action="{cancel}"' in confirm.content.decode()
        assert "Keep it running" in confirm.content.decode()
        training_round.refresh_from_db()
        assert not training_round.cancel_requested

        assert client.post(cancel).status_code == 302
        training_round.refresh_from_db()
        assert training_round.cancel_requested and training_round.status == "running"  # the worker stops it
        assert 'id="cancel-round"' not in client.get(self.url(training_round)).content.decode()

    def test_confirming_a_finished_round_goes_back_to_its_page(self, client, lead, project, base):
        training_round = launch_round(project, method="dpo", base=base)
        training_round.request_cancel()
        client.force_login(lead)
        cancel = reverse("cancel_round", args=[project.slug, training_round.number])
        assert client.get(cancel)["Location"] == self.url(training_round)

    def test_sampling_after_the_policy_eval_is_named_sampling_with_its_own_count(self, client, lead, project, base):
        training_round = launch_round(project, method="dpo", base=base)
        training_round.claim()
        training_round.beat(stage="dpo", step=112, total_steps=112, progress=0.5)
        training_round.beat(stage="eval", step=0, total_steps=0)
        client.force_login(lead)
        assert "Evaluating the new policy" in client.get(self.url(training_round), **HTMX).content.decode()

        _progress_callback(training_round, "sample", 1, 2)(30, 120, {})  # what sampling reports after a batch

        region = client.get(self.url(training_round), **HTMX).content.decode()
        assert "Sampling new responses into the queue: 30 of 120 responses" in region
        assert "eval" not in region.lower() and "112" not in region

    def test_a_round_that_sampled_shows_its_new_samples_in_the_queue(self, client, lead, project, base):
        training_round = launch_round(project, method="dpo", base=base)
        assert "sample" in training_round.config
        prompt = project.prompts.create(messages=[{"role": "user", "content": "Hi"}], external_id="p1")
        other = launch_round(project, method="dpo", base=base)  # its samples are not this round's
        for number, count in ((training_round.number, 3), (other.number, 2)):
            sampled = [
                Response.objects.create(
                    prompt=prompt, content=f"{number}-{n}", source="model", generation_params={"round": number}
                )
                for n in range(count)
            ]
            task = Task.objects.create(project=project, prompt=prompt, kind="ranking", round_number=number)
            for position, response in enumerate(sampled):
                TaskResponse.objects.create(task=task, response=response, position=position)
        Response.objects.create(prompt=prompt, content="imported", generation_params={"round": training_round.number})
        client.force_login(lead)
        assert "new-samples" not in client.get(self.url(training_round)).content.decode()  # still running

        training_round.claim()
        training_round.finish("succeeded")
        page = client.get(self.url(training_round)).content.decode()
        assert "3 new samples in the queue" in page and "in 1 task, 1 still open" in page

    def test_annotators_and_outsiders_get_404(self, client, annotator, outsider, project, base):
        training_round = launch_round(project, method="dpo", base=base)
        for user in (annotator, outsider):
            client.force_login(user)
            assert client.get(self.url(training_round)).status_code == 404
            assert client.get(reverse("round_list", args=[project.slug])).status_code == 404
            cancel = reverse("cancel_round", args=[project.slug, training_round.number])
            assert client.post(cancel).status_code == 404
        assert not TrainingRound.objects.get().cancel_requested

    def test_the_list_links_each_round(self, client, lead, project, base):
        first, second = launch_round(project, method="dpo", base=base), launch_round(project, method="sft", base=base)
        client.force_login(lead)
        page = client.get(reverse("round_list", args=[project.slug])).content.decode()
        assert self.url(first) in page and self.url(second) in page and "SFT" in page


class TestChart:
    def test_points_span_the_box_with_larger_values_higher(self):
        drawn = chart("dpo/loss", [(1, 0.7), (2, 0.5), (3, 0.3)])
        points = [tuple(map(float, p.split(","))) for p in drawn["points"].split()]
        assert points[0][0] < points[1][0] < points[2][0]
        assert points[0][1] < points[1][1] < points[2][1]  # y grows downwards in SVG: lower loss, lower on screen
        assert (drawn["low"], drawn["high"], drawn["last"]) == (0.3, 0.7, 0.3)

    def test_a_single_point_does_not_divide_by_zero(self):
        assert chart("ppo/kl", [(5, 1.0)])["points"] == "4.0,116.0"


class TestCommand:
    def test_queues_a_round_with_settings_and_filters(self, project, base):
        out = StringIO()
        call_command(
            "launch_round", project.slug, "--method", "dpo", "--base", base, "--set", "beta=0.3",
            "--filter", "split=train", stdout=out,
        )  # fmt: skip
        training_round = TrainingRound.objects.get()
        assert "Queued round 1" in out.getvalue()
        assert training_round.config["dpo"]["beta"] == 0.3 and training_round.filters["split"] == "train"

    def test_the_operator_may_name_any_path_or_hub_id(self, project, settings, tmp_path):
        settings.ARBITER_ALLOW_HUB_MODELS = False  # leads may name neither; the operator's shell reads any file
        anywhere = write_model_files(tmp_path / "anywhere")
        for base in (anywhere, "org/name"):
            call_command("launch_round", project.slug, "--method", "dpo", "--base", base, stdout=StringIO())
        assert list(TrainingRound.objects.order_by("number").values_list("base_model", flat=True)) == [
            anywhere,
            "org/name",
        ]

    def test_a_folder_that_is_not_a_model_is_refused_before_anything_is_queued(self, project, tmp_path):
        # What make_tiny_model writes: a policy and a reward model side by side, no model at the top.
        write_model_files(tmp_path / "tiny" / "policy")
        write_model_files(tmp_path / "tiny" / "reward")
        with pytest.raises(CommandError) as refused:
            call_command("launch_round", project.slug, "--method", "dpo", "--base", str(tmp_path / "tiny"))
        assert str(refused.value) == (
            f"base: {tmp_path}/tiny is not a model a round can load: it has no config.json; no weights "
            "(model.safetensors, pytorch_model.bin or a sharded index of either); no fast tokenizer (tokenizer.json, "
            f"or vocab.json and merges.txt). It holds models in policy/ and reward/: give {tmp_path}/tiny/policy, "
            "for instance."
        )
        assert not TrainingRound.objects.exists() and not DatasetSnapshot.objects.exists()

    def test_a_launch_beyond_the_quota_is_refused_naming_the_setting(self, project, base, settings):
        settings.ARBITER_MAX_ACTIVE_ROUNDS = 1
        call_command("launch_round", project.slug, "--method", "dpo", "--base", base, stdout=StringIO())
        with pytest.raises(CommandError, match="ARBITER_MAX_ACTIVE_ROUNDS"):
            call_command("launch_round", project.slug, "--method", "dpo", "--base", base)

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--set", "beta"], "--set 'beta': expected KEY=VALUE"),
            (["--set", "bogus=1"], "bogus: Not a setting of dpo"),
            (["--filter", "split=nope"], "split: Must be one of"),
        ],
    )
    def test_refuses_bad_input_naming_it(self, project, base, args, message):
        with pytest.raises(CommandError, match=re.escape(message)):
            call_command("launch_round", project.slug, "--method", "dpo", "--base", base, *args)
        assert not TrainingRound.objects.exists()

    @pytest.mark.django_db(transaction=True)  # the round is sent at commit
    def test_wait_exits_non_zero_when_the_round_fails(self, project, base, settings):
        # Eager: the round runs at commit, in this process; the project has no annotations, so it fails.
        settings.CELERY_TASK_ALWAYS_EAGER = True
        from arbiter.celery import app

        app.conf.task_always_eager = True
        try:
            with pytest.raises(CommandError, match="Round 1 failed: .*no rows"):
                call_command("launch_round", project.slug, "--method", "dpo", "--base", base, "--wait")
        finally:
            app.conf.task_always_eager = False


class TestRegistry:
    def test_promote_archives_the_previous_active_version(self, project):
        first = ModelVersion.register(project=project, kind="policy", base_model="tiny")
        second = ModelVersion.register(project=project, kind="policy", base_model="tiny", parent=first)
        reward = ModelVersion.register(project=project, kind="reward", base_model="tiny")
        first.promote()
        reward.promote()
        second.promote()
        statuses = dict(ModelVersion.objects.values_list("pk", "status"))
        assert statuses == {first.pk: "archived", second.pk: "active", reward.pk: "active"}
        assert ModelVersion.objects.active_policy(project) == second
        assert (second.version, reward.version) == (2, 1) and second.lineage() == [second, first]

    def test_promote_action_in_the_admin(self, client, staff_lead, project):
        version = ModelVersion.register(project=project, kind="policy", base_model="tiny")
        client.force_login(staff_lead)
        changelist = reverse("admin:models_registry_modelversion_changelist")
        client.post(changelist, {"action": "promote", "_selected_action": [version.pk]})
        version.refresh_from_db()
        assert version.status == "active"
        page = client.get(reverse("admin:models_registry_modelversion_change", args=[version.pk])).content.decode()
        assert "Lineage" in page
