"""The project's task counters: the progress bars read them, so no page counts a project's tasks."""

import logging
import re
import time
from html.parser import HTMLParser

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotate import tasks as celery_tasks
from annotate.importing import ImportFailed, import_file
from annotate.models import Annotation, Project, Prompt, Task
from tests.annotate.test_queue import answer_for, make_task

HTMX = {"HTTP_HX_REQUEST": "true"}


def counters(project):
    project.refresh_from_db()
    return project.task_count, project.complete_task_count


def exact(project):
    """The counts the counters stand for, counted the slow way."""
    tasks = Task.objects.filter(project=project)
    return tasks.count(), tasks.filter(status=Task.Status.COMPLETE).count()


class TestCounters:
    def test_new_tasks_are_counted_open_and_complete(self, project):
        make_task(project)
        make_task(project, status=Task.Status.COMPLETE)
        assert counters(project) == (2, 1) == exact(project)

    def test_the_submit_that_completes_a_task_counts_it_and_earlier_ones_do_not(self, project, annotator, lead):
        task = make_task(project, required=2)
        first = project.next_assignment(annotator)
        first.submit(answer_for(task), user=annotator)
        assert counters(project) == (1, 0)
        second = project.next_assignment(lead)
        second.submit(answer_for(task), user=lead)
        assert counters(project) == (1, 1) == exact(project)

    def test_a_repeated_submit_counts_the_completion_once(self, project, annotator):
        task = make_task(project, required=1)
        lease = project.next_assignment(annotator)
        lease.submit(answer_for(task), user=annotator)
        lease.submit(answer_for(task), user=annotator)
        assert counters(project) == (1, 1) == exact(project)

    def test_refresh_progress_after_a_deleted_annotation_uncounts_the_completion(self, project, annotator):
        task = make_task(project, required=1)
        project.next_assignment(annotator).submit(answer_for(task), user=annotator)
        Annotation.objects.filter(task=task).delete()
        task.refresh_progress()
        assert counters(project) == (1, 0) == exact(project)
        task.refresh_progress()  # no change, no move
        assert counters(project) == (1, 0)

    def test_recount_repairs_counters_after_rows_changed_behind_them(self, project):
        for _ in range(3):
            make_task(project)
        Task.objects.filter(pk=Task.objects.first().pk).delete()  # counted
        Task.objects.filter(project=project).update(status=Task.Status.COMPLETE)  # behind the counters
        assert counters(project) == (2, 0)
        assert project.recount_tasks() == ((2, 0), (2, 2))
        assert counters(project) == (2, 2) == exact(project)
        assert project.recount_tasks() is None

    def test_another_projects_tasks_are_not_counted(self, project):
        other = Project.objects.create(name="Other", slug="other")
        make_task(other)
        assert counters(project) == (0, 0)
        assert counters(other) == (1, 0)


class TestDeletes:
    """A deleted task leaves the counters, however it is deleted."""

    @pytest.fixture
    def tasks(self, project):
        return [make_task(project), make_task(project, status=Task.Status.COMPLETE), make_task(project)]

    def test_deleting_a_task_uncounts_it(self, project, tasks):
        tasks[0].delete()
        assert counters(project) == (2, 1) == exact(project)
        tasks[1].delete()
        assert counters(project) == (1, 0) == exact(project)

    def test_deleting_a_queryset_of_tasks_uncounts_each(self, project, tasks):
        Task.objects.filter(pk__in=[tasks[0].pk, tasks[1].pk]).delete()
        assert counters(project) == (1, 0) == exact(project)

    def test_deleting_a_prompt_uncounts_its_tasks(self, project, tasks):
        second_on_prompt = Task.objects.create(project=project, prompt=tasks[1].prompt, kind="rating")
        assert counters(project) == (4, 1)
        Prompt.objects.filter(pk=tasks[1].prompt_id).delete()
        assert not Task.objects.filter(pk=second_on_prompt.pk).exists()
        assert counters(project) == (2, 0) == exact(project)

    def test_deleting_a_project_deletes_its_tasks_without_counting_them_one_by_one(self, project, tasks):
        other = Project.objects.create(name="Other", slug="other")
        make_task(other)
        with CaptureQueriesContext(connection) as queries:
            project.delete()
        assert not any('UPDATE "annotate_project"' in q["sql"] for q in queries)
        assert counters(other) == (1, 0) == exact(other)

    def test_deleting_tasks_past_drifted_counters_still_works_and_stays_at_zero(self, project, tasks):
        Project.objects.filter(pk=project.pk).update(task_count=1, complete_task_count=0)
        Task.objects.filter(project=project).delete()
        assert counters(project) == (0, 0) == exact(project)

    def test_the_admin_delete_page_and_the_bulk_action_uncount(self, client, project, tasks, make_user):
        client.force_login(make_user("root", is_superuser=True, is_staff=True))
        response = client.post(reverse("admin:annotate_task_delete", args=[tasks[0].pk]), {"post": "yes"})
        assert response.status_code == 302
        assert counters(project) == (2, 1) == exact(project)
        changelist = reverse("admin:annotate_task_changelist")
        selected = [tasks[1].pk, tasks[2].pk]
        response = client.post(changelist, {"action": "delete_selected", "_selected_action": selected, "post": "yes"})
        assert response.status_code == 302
        assert counters(project) == (0, 0) == exact(project)

    def test_the_admin_prompt_delete_uncounts_its_tasks(self, client, project, tasks, make_user):
        client.force_login(make_user("root", is_superuser=True, is_staff=True))
        response = client.post(reverse("admin:annotate_prompt_delete", args=[tasks[1].prompt_id]), {"post": "yes"})
        assert response.status_code == 302
        assert counters(project) == (2, 0) == exact(project)


class _FormData(HTMLParser):
    """What a browser would post from a page's form: its inputs, checked boxes, selected options and textareas."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.data: dict[str, list[str]] = {}
        self.select: str | None = None
        self.textarea: str | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        name = attrs.get("name")
        if tag == "input" and name and attrs.get("type") not in ("submit", "button", "file"):
            if attrs.get("type") not in ("checkbox", "radio") or "checked" in attrs:
                self.data.setdefault(name, []).append(attrs.get("value") or "")
        elif tag == "select":
            self.select = name
        elif tag == "option" and self.select and "selected" in attrs:
            self.data.setdefault(self.select, []).append(attrs.get("value") or "")
        elif tag == "textarea" and name:
            self.textarea = name
            self.data[name] = [""]

    def handle_endtag(self, tag):
        if tag == "select":
            self.select = None
        elif tag == "textarea":
            self.textarea = None

    def handle_data(self, data):
        if self.textarea:
            self.data[self.textarea][0] += data.removeprefix("\n") if not self.data[self.textarea][0] else data


class TestAdminEdits:
    """A lead's edit of a task in the admin moves the counters as refresh_progress does: its status follows its
    annotations and required count."""

    @pytest.fixture
    def admin_client(self, client, make_user):
        client.force_login(make_user("root", is_superuser=True, is_staff=True))
        return client

    def edit(self, client, task, **changes):
        url = reverse("admin:annotate_task_change", args=[task.pk])
        data = _FormData(client.get(url).content.decode()).data
        data.update({name: [str(value)] for name, value in changes.items()})
        response = client.post(url, data)
        assert response.status_code == 302, response.context["adminform"].form.errors
        task.refresh_from_db()

    def test_lowering_the_required_count_to_the_annotations_completes_the_task(self, admin_client, project, annotator):
        task = make_task(project, required=2)
        project.next_assignment(annotator).submit(answer_for(task), user=annotator)
        assert counters(project) == (1, 0)
        self.edit(admin_client, task, required_annotations=1)
        assert (task.status, task.annotation_count) == (Task.Status.COMPLETE, 1)
        assert counters(project) == (1, 1) == exact(project)

    def test_raising_the_required_count_reopens_a_complete_task(self, admin_client, project, annotator):
        task = make_task(project, required=1)
        project.next_assignment(annotator).submit(answer_for(task), user=annotator)
        assert counters(project) == (1, 1)
        self.edit(admin_client, task, required_annotations=3)
        assert task.status == Task.Status.OPEN
        assert counters(project) == (1, 0) == exact(project)

    def test_the_status_is_shown_not_edited_and_a_posted_one_is_ignored(self, admin_client, project):
        task = make_task(project)
        self.edit(admin_client, task, status=Task.Status.COMPLETE, priority=4)
        assert (task.status, task.priority) == (Task.Status.OPEN, 4)
        assert counters(project) == (1, 0) == exact(project)

    def test_a_task_cannot_be_moved_to_another_project(self, admin_client, project):
        other = Project.objects.create(name="Other", slug="other")
        task = make_task(project)
        self.edit(admin_client, task, project=other.pk)
        assert task.project == project
        assert counters(project) == (1, 0) and counters(other) == (0, 0)


class TestPeriodicRecount:
    def test_the_beat_task_repairs_drift_and_logs_it_with_before_and_after(self, project, caplog):
        other = Project.objects.create(name="Other", slug="other")
        make_task(project)
        make_task(project, status=Task.Status.COMPLETE)
        make_task(other)
        Project.objects.filter(pk=project.pk).update(task_count=7, complete_task_count=0)  # drift

        with caplog.at_level(logging.WARNING, logger="annotate.models"):
            assert celery_tasks.recount_task_counters() == 1

        assert counters(project) == (2, 1) == exact(project)
        assert counters(other) == (1, 0)
        [record] = caplog.records
        assert record.getMessage() == "Project helpfulness: task counters repaired, tasks 7 -> 2, complete 0 -> 1"

    def test_counters_that_are_right_are_left_alone_and_nothing_is_logged(self, project, caplog):
        make_task(project)
        with caplog.at_level(logging.WARNING, logger="annotate.models"):
            assert celery_tasks.recount_task_counters() == 0
        assert not caplog.records

    def test_beat_runs_it_every_hour(self, settings):
        entry = settings.CELERY_BEAT_SCHEDULE["recount-task-counters"]
        assert (entry["task"], entry["schedule"]) == ("annotate.tasks.recount_task_counters", 3600.0)


class TestImportCounts:
    def test_an_import_counts_its_tasks_and_its_imported_preferences_as_complete(self, project, tmp_path):
        responses, preferences = tmp_path / "responses.jsonl", tmp_path / "preferences.jsonl"
        responses.write_text('{"id": "a", "prompt": "Hi?", "responses": ["Hello", "Hey", "Yo"]}\n')
        preferences.write_text('{"prompt": "2+2?", "chosen": "4", "rejected": "5"}\n')
        made = import_file(project, responses).tasks_created
        imported = import_file(project, preferences)
        assert made > 1 and imported.annotations_created == 1
        assert counters(project) == exact(project) == (made + imported.tasks_created, 1)

    def test_a_failed_import_moves_no_counter(self, project, tmp_path):
        make_task(project)
        path = tmp_path / "rows.jsonl"
        path.write_text('{"id": "a", "prompt": "Hi?", "responses": ["Hello", "Hey"]}\n{"id": "b", "prompt": 3}\n')
        with pytest.raises(ImportFailed):
            import_file(project, path)
        assert counters(project) == (1, 0) == exact(project)


class TestPages:
    def test_the_htmx_submit_that_completes_a_task_shows_it_on_the_project_bar(self, client, annotator, project):
        task = make_task(project, required=1)
        make_task(project, required=1)
        client.force_login(annotator)
        client.get(reverse("task_page", args=[project.slug]))
        lease = annotator.assignments.get(task=task)
        url = reverse("submit_assignment", args=[project.slug, lease.pk])
        page = client.post(url, {"score": "4"}, **HTMX).content.decode()
        assert re.search(r'<progress id="progress-project" max="2" value="1">', page), page

    def test_the_task_page_counts_no_project_wide_rows(self, client, annotator, project):
        for _ in range(5):
            make_task(project)
        client.force_login(annotator)
        with CaptureQueriesContext(connection) as queries:
            assert client.get(reverse("task_page", args=[project.slug])).status_code == 200
        counts = [q["sql"] for q in queries if q["sql"].startswith("SELECT COUNT(")]
        # What remains for the user is counted up to a cap; nothing else is counted at all (the live-lease
        # subqueries of the queue's statements count one task's leases each).
        assert len(counts) == 1 and re.search(r"LIMIT 100\b", counts[0]), counts


class TestRemaining:
    """What remains for the user is counted once a minute per session, and one less after each submit or skip."""

    @staticmethod
    def page(client, method, url, data=None):
        with CaptureQueriesContext(connection) as queries:
            response = client.post(url, data, **HTMX) if method == "post" else client.get(url)
        page = response.content.decode()
        counted = any(q["sql"].startswith("SELECT COUNT(") for q in queries)
        return page, int(re.search(r"· (\d+) more after this", page).group(1)), counted

    def test_counted_once_then_one_less_per_submit_and_skip_then_recounted(
        self, client, annotator, project, monkeypatch
    ):
        for _ in range(6):
            make_task(project)
        client.force_login(annotator)
        url = reverse("task_page", args=[project.slug])
        _, remaining, counted = self.page(client, "get", url)
        assert (remaining, counted) == (5, True)

        lease = annotator.assignments.get(status="active")
        submit = reverse("submit_assignment", args=[project.slug, lease.pk])
        _, remaining, counted = self.page(client, "post", submit, {"score": "3"})
        assert (remaining, counted) == (4, False)

        lease = annotator.assignments.get(status="active")
        skip = reverse("skip_assignment", args=[project.slug, lease.pk])
        _, remaining, counted = self.page(client, "post", skip)
        assert (remaining, counted) == (3, False)

        # Someone else's work shrinks the pool; the next count, a minute on, sees it.
        for task in Task.objects.filter(status=Task.Status.OPEN).exclude(assignments__annotator=annotator)[:2]:
            task.status = Task.Status.COMPLETE
            task.save()
        clock = time.time() + 61
        monkeypatch.setattr(time, "time", lambda: clock)
        _, remaining, counted = self.page(client, "get", url)
        assert (remaining, counted) == (1, True)
