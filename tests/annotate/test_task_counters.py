"""The project's task counters: the progress bars read them, so no page counts a project's tasks."""

import re
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotate.importing import ImportFailed, import_file
from annotate.models import Annotation, Project, Task
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
        Task.objects.filter(pk=Task.objects.first().pk).delete()
        Task.objects.filter(project=project).update(status=Task.Status.COMPLETE)
        assert counters(project) == (3, 0)
        project.recount_tasks()
        assert counters(project) == (2, 2) == exact(project)

    def test_another_projects_tasks_are_not_counted(self, project):
        other = Project.objects.create(name="Other", slug="other")
        make_task(other)
        assert counters(project) == (0, 0)
        assert counters(other) == (1, 0)


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
