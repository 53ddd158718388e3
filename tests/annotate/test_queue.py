"""The annotation queue, rule by rule: what a user is given next, leases, expiry, submit and skip."""

import itertools
from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotate import tasks
from annotate.models import (
    Annotation,
    Assignment,
    LeaseError,
    Membership,
    Project,
    Prompt,
    Response,
    Task,
    TaskResponse,
)

_prompt_numbers = itertools.count()
RESPONSES_PER_KIND = {"rating": 1, "pairwise": 2, "ranking": 3}


def make_task(project, kind="rating", *, priority=0, required=None, status=Task.Status.OPEN):
    """A task over fresh responses to a fresh prompt; required defaults to the project's overlap."""
    prompt = Prompt.objects.create(
        project=project, external_id=f"made-{next(_prompt_numbers)}", messages=[{"role": "user", "content": "Hi?"}]
    )
    task = Task.objects.create(
        project=project,
        prompt=prompt,
        kind=kind,
        priority=priority,
        required_annotations=required or project.overlap,
        status=status,
    )
    for position in range(RESPONSES_PER_KIND[kind]):
        response = Response.objects.create(prompt=prompt, content=f"answer {position}")
        TaskResponse.objects.create(task=task, response=response, position=position)
    return task


def answer_for(task):
    """A valid answer for any kind of task."""
    if task.kind == "rating":
        return {"score": 4}
    if task.kind == "pairwise":
        return {"choice": "a", "strength": 1}
    return {"ranking": task.response_ids()}


def expire(lease):
    """Move a lease's time into the past, as if its annotator walked away."""
    Assignment.objects.filter(pk=lease.pk).update(
        leased_at=timezone.now() - timedelta(hours=2), expires_at=timezone.now() - timedelta(seconds=1)
    )
    lease.refresh_from_db()


@pytest.fixture
def second_annotator(project, make_user):
    user = make_user("second")
    Membership.objects.create(project=project, user=user)
    return user


@pytest.fixture
def third_annotator(project, make_user):
    user = make_user("third")
    Membership.objects.create(project=project, user=user)
    return user


class TestNextAssignment:
    def test_creates_a_lease_that_expires_after_the_projects_lease_length(self, project, annotator):
        project.lease_length = timedelta(minutes=7)
        project.save()
        task = make_task(project, "pairwise")

        lease = project.next_assignment(annotator)

        lease.refresh_from_db()
        assert (lease.task, lease.annotator, lease.status) == (task, annotator, Assignment.Status.ACTIVE)
        assert lease.expires_at - lease.leased_at == timedelta(minutes=7)
        assert sorted(lease.shown_order) == sorted(task.response_ids())

    def test_gives_the_users_own_live_lease_again_instead_of_a_new_one(self, project, annotator):
        make_task(project)
        make_task(project)

        first = project.next_assignment(annotator)
        again = project.next_assignment(annotator)

        assert again.pk == first.pk
        assert Assignment.objects.filter(annotator=annotator).count() == 1

    def test_reuses_the_oldest_of_several_live_leases(self, project, annotator):
        project.max_open_leases = 3
        make_task(project)
        make_task(project)
        oldest = project.next_assignment(annotator, reuse_lease=False)
        project.next_assignment(annotator, reuse_lease=False)

        assert project.next_assignment(annotator).pk == oldest.pk

    def test_order_is_priority_then_fewest_annotations_then_age(self, project, annotator, lead):
        project.max_open_leases = 10
        annotated_old = make_task(project)
        plain_old = make_task(project)
        plain_new = make_task(project)
        urgent_annotated = make_task(project, priority=5)
        for task in (annotated_old, urgent_annotated):
            Annotation.objects.create(task=task, annotator=lead, score=3)
            task.refresh_progress()

        given = [project.next_assignment(annotator, reuse_lease=False).task for _ in range(4)]

        assert given == [urgent_annotated, plain_old, plain_new, annotated_old]
        assert project.next_assignment(annotator, reuse_lease=False) is None

    def test_depth_order_is_priority_then_most_annotations_still_under_k_then_age(
        self, project, annotator, lead, second_annotator
    ):
        project.overlap, project.fill, project.max_open_leases = 3, Project.Fill.DEPTH, 10
        project.save()
        untouched_old = make_task(project)
        one = make_task(project)
        two = make_task(project)
        urgent_untouched = make_task(project, priority=5)
        untouched_new = make_task(project)
        full = make_task(project)  # k annotations: complete, never offered
        for task, annotators in ((one, [lead]), (two, [lead, second_annotator]), (full, [lead, second_annotator])):
            for user in annotators:
                Annotation.objects.create(task=task, annotator=user, score=3)
        full.required_annotations = 2
        full.save()
        for task in (one, two, full):
            task.refresh_progress()

        given = [project.next_assignment(annotator, reuse_lease=False).task for _ in range(5)]

        assert given == [urgent_untouched, two, one, untouched_old, untouched_new]
        assert project.next_assignment(annotator, reuse_lease=False) is None

    def test_never_offers_another_projects_task(self, project, annotator):
        other = Project.objects.create(name="Other", slug="other")
        make_task(other)

        assert project.next_assignment(annotator) is None

    def test_never_offers_a_task_of_a_disabled_kind(self, project, annotator):
        make_task(project, "rating", priority=1)
        pairwise = make_task(project, "pairwise")
        project.task_kinds = ["pairwise", "ranking"]
        project.save()

        assert project.next_assignment(annotator).task == pairwise
        assert project.next_assignment(annotator, reuse_lease=False) is None

    def test_never_offers_a_complete_task(self, project, annotator):
        make_task(project, status=Task.Status.COMPLETE)

        assert project.next_assignment(annotator) is None

    def test_never_offers_a_task_the_user_already_annotated(self, project, annotator):
        task = make_task(project)
        Annotation.objects.create(task=task, annotator=annotator, score=2)  # e.g. entered by a lead in the admin
        task.refresh_progress()

        assert project.next_assignment(annotator) is None

    def test_never_offers_again_a_task_whose_lease_expired_on_the_user(self, project, annotator):
        stale_task = make_task(project)
        other_task = make_task(project)
        expire(project.next_assignment(annotator))

        assert project.next_assignment(annotator).task == other_task
        assert not Assignment.objects.live().filter(task=stale_task).exists()

    def test_task_with_k_live_leases_is_full(self, project, annotator, second_annotator, third_annotator):
        make_task(project, required=2)
        project.next_assignment(annotator)
        project.next_assignment(second_annotator)

        assert project.next_assignment(third_annotator) is None

    def test_task_with_annotations_and_live_leases_reaching_k_is_full(self, project, lead, annotator, second_annotator):
        task = make_task(project, required=2)
        Annotation.objects.create(task=task, annotator=lead, score=3)
        task.refresh_progress()
        project.next_assignment(annotator)

        assert project.next_assignment(second_annotator) is None

    def test_task_below_k_with_others_leases_is_offered(self, project, annotator, second_annotator):
        task = make_task(project, required=2)
        project.next_assignment(annotator)

        assert project.next_assignment(second_annotator).task == task

    def test_open_lease_cap_stops_new_leases_until_one_is_submitted(self, project, annotator):
        project.max_open_leases = 2
        for _ in range(3):
            make_task(project)

        first = project.next_assignment(annotator, reuse_lease=False)
        second = project.next_assignment(annotator, reuse_lease=False)
        assert project.next_assignment(annotator, reuse_lease=False) is None

        first.submit(answer_for(first.task), user=annotator)
        third = project.next_assignment(annotator, reuse_lease=False)
        assert third is not None
        assert len({first.task_id, second.task_id, third.task_id}) == 3

    def test_open_lease_cap_ignores_expired_leases(self, project, annotator):
        project.max_open_leases = 1
        make_task(project)
        make_task(project)
        expire(project.next_assignment(annotator, reuse_lease=False))

        assert project.next_assignment(annotator, reuse_lease=False) is not None

    def test_open_lease_cap_counts_only_this_projects_leases(self, project, annotator):
        other = Project.objects.create(name="Other", slug="other", max_open_leases=1)
        Membership.objects.create(project=other, user=annotator)
        make_task(other)
        project.max_open_leases = 1
        make_task(project)

        assert other.next_assignment(annotator, reuse_lease=False) is not None
        assert project.next_assignment(annotator, reuse_lease=False) is not None

    @pytest.mark.postgres
    def test_selection_locks_the_task_with_skip_locked(self, project, annotator):
        make_task(project)

        with CaptureQueriesContext(connection) as queries:
            project.next_assignment(annotator)

        selects = [q["sql"] for q in queries if q["sql"].startswith("SELECT") and 'FROM "annotate_task"' in q["sql"]]
        assert any(sql.endswith('FOR UPDATE OF "annotate_task" SKIP LOCKED') for sql in selects), selects


class TestFillOrder:
    """Which task a second annotator gets after a first one answered one of two: the project's fill decides."""

    @pytest.fixture
    def started(self, project, annotator):
        project.overlap = 3
        project.save()
        first, second = make_task(project), make_task(project)
        lease = project.next_assignment(annotator)
        assert lease.task == first
        lease.submit(answer_for(first), user=annotator)
        return first, second

    def test_breadth_is_the_default_and_gives_the_task_nobody_answered(self, project, second_annotator, started):
        assert Project().fill == Project.Fill.BREADTH
        assert project.next_assignment(second_annotator).task == started[1]

    def test_depth_gives_the_task_another_annotator_started(self, project, second_annotator, started):
        project.fill = Project.Fill.DEPTH
        project.save()
        project.refresh_from_db()
        assert project.next_assignment(second_annotator).task == started[0]

    def test_depth_gives_a_task_being_answered_to_the_next_annotator_too(
        self, project, annotator, second_annotator, third_annotator
    ):
        project.overlap, project.fill = 3, Project.Fill.DEPTH
        project.save()
        first, _ = make_task(project), make_task(project)
        # Leases held, nothing submitted yet: the oldest task takes all three, rather than one each.
        for user in (annotator, second_annotator, third_annotator):
            assert project.next_assignment(user).task == first


class TestQueryCount:
    """The queries of next_assignment do not grow with the project: no request scans or counts the tasks."""

    @pytest.fixture(autouse=True)
    def no_gold_turns(self, project):
        # A gold turn (one lease in gold_rate, at random) asks for a gold task first: test_gold.py counts those.
        project.gold_rate = 0

    @staticmethod
    def add_tasks(project, n):
        prompt = Prompt.objects.create(
            project=project, external_id=f"bulk{n}", messages=[{"role": "user", "content": "?"}]
        )
        response = Response.objects.create(prompt=prompt, content="bulk")
        new = Task.objects.bulk_create(
            Task(project=project, prompt=prompt, kind="rating", required_annotations=2) for _ in range(n)
        )
        TaskResponse.objects.bulk_create(TaskResponse(task=task, response=response, position=0) for task in new)

    @staticmethod
    def queries_of_next(project, user, **options):
        with CaptureQueriesContext(connection) as queries:
            assert project.next_assignment(user, **options) is not None
        return [q["sql"] for q in queries]

    def test_new_lease_takes_as_many_queries_for_10_tasks_as_for_1000(
        self, project, annotator, second_annotator, third_annotator
    ):
        self.add_tasks(project, 10)
        with_10 = self.queries_of_next(project, annotator)
        self.add_tasks(project, 990)
        # Leases and annotations elsewhere in the project must not cost extra queries either.
        for task in Task.objects.filter(project=project)[10:500]:
            Annotation.objects.create(task=task, annotator=second_annotator, score=1)
            task.refresh_progress()
        with_1000 = self.queries_of_next(project, third_annotator)

        assert len(with_10) == len(with_1000), "\n".join(with_1000)

    def test_reused_lease_takes_as_many_queries_for_10_tasks_as_for_1000(self, project, annotator):
        self.add_tasks(project, 10)
        project.next_assignment(annotator)
        with_10 = self.queries_of_next(project, annotator)
        self.add_tasks(project, 990)
        with_1000 = self.queries_of_next(project, annotator)

        assert len(with_10) == len(with_1000), "\n".join(with_1000)


class TestExpiry:
    def test_expired_lease_gives_its_task_to_the_next_user(self, project, annotator, second_annotator):
        task = make_task(project, required=1)
        expire(project.next_assignment(annotator))

        lease = project.next_assignment(second_annotator)

        assert lease.task == task

    def test_expire_stale_closes_expired_leases_and_keeps_live_ones(self, project, annotator, second_annotator):
        make_task(project)
        make_task(project)
        stale = project.next_assignment(annotator)
        live = project.next_assignment(second_annotator)
        expire(stale)

        assert Assignment.objects.expire_stale() == 1

        stale.refresh_from_db()
        live.refresh_from_db()
        assert (stale.status, live.status) == (Assignment.Status.EXPIRED, Assignment.Status.ACTIVE)

    def test_celery_task_expires_stale_leases(self, project, annotator):
        make_task(project)
        lease = project.next_assignment(annotator)
        expire(lease)

        assert tasks.expire_leases.apply().get() == 1

        lease.refresh_from_db()
        assert lease.status == Assignment.Status.EXPIRED

    def test_command_expires_stale_leases(self, project, annotator):
        make_task(project)
        lease = project.next_assignment(annotator)
        expire(lease)
        out = StringIO()

        call_command("expire_leases", stdout=out)

        lease.refresh_from_db()
        assert lease.status == Assignment.Status.EXPIRED
        assert out.getvalue().strip() == "Expired 1 leases."

    def test_closed_expired_lease_still_keeps_the_task_from_its_user(self, project, annotator, second_annotator):
        make_task(project, required=2)
        expire(project.next_assignment(annotator))
        Assignment.objects.expire_stale()

        assert project.next_assignment(annotator) is None
        assert project.next_assignment(second_annotator) is not None


class TestSubmit:
    def test_submission_stores_the_answer_and_closes_the_lease(self, project, annotator):
        make_task(project, "pairwise")
        lease = project.next_assignment(annotator)

        annotation = lease.submit({"choice": "b", "strength": 2}, user=annotator)

        lease.refresh_from_db()
        assert (annotation.annotator, annotation.assignment, annotation.choice) == (annotator, lease, "b")
        assert (lease.status, lease.submitted_at is not None) == (Assignment.Status.SUBMITTED, True)

    def test_task_completes_at_k_annotations_and_leaves_the_pool(
        self, project, annotator, second_annotator, third_annotator
    ):
        task = make_task(project, required=2)
        for user in (annotator, second_annotator):
            lease = project.next_assignment(user)
            lease.submit(answer_for(lease.task), user=user)
            task.refresh_from_db()
            assert project.next_assignment(user) is None

        assert (task.status, task.annotation_count) == (Task.Status.COMPLETE, 2)
        assert project.next_assignment(third_annotator) is None

    def test_task_stays_open_below_k(self, project, annotator):
        task = make_task(project, required=2)
        lease = project.next_assignment(annotator)
        lease.submit(answer_for(task), user=annotator)

        task.refresh_from_db()
        assert (task.status, task.annotation_count) == (Task.Status.OPEN, 1)

    def test_submitting_someone_elses_lease_is_refused(self, project, annotator, second_annotator):
        make_task(project)
        lease = project.next_assignment(annotator)

        with pytest.raises(LeaseError, match="given to someone else"):
            lease.submit(answer_for(lease.task), user=second_annotator)
        assert not Annotation.objects.exists()

    def test_submitting_an_expired_lease_whose_task_went_to_someone_else_is_refused(
        self, project, annotator, second_annotator
    ):
        task = make_task(project, required=1)
        late = project.next_assignment(annotator)
        expire(late)
        project.next_assignment(second_annotator)

        with pytest.raises(LeaseError, match="ran out"):
            late.submit(answer_for(task), user=annotator)
        assert not Annotation.objects.exists()

    def test_submitting_an_expired_lease_whose_task_was_filled_is_refused(self, project, annotator, second_annotator):
        task = make_task(project, required=1)
        late = project.next_assignment(annotator)
        expire(late)
        Assignment.objects.expire_stale()
        other = project.next_assignment(second_annotator)
        other.submit(answer_for(task), user=second_annotator)

        with pytest.raises(LeaseError, match="ran out"):
            late.submit(answer_for(task), user=annotator)
        task.refresh_from_db()
        assert (task.annotation_count, Annotation.objects.count()) == (1, 1)

    def test_expired_lease_whose_task_still_has_room_is_accepted(self, project, annotator):
        task = make_task(project, required=1)
        late = project.next_assignment(annotator)
        expire(late)

        late.submit(answer_for(task), user=annotator)

        task.refresh_from_db()
        assert (task.status, task.annotation_count) == (Task.Status.COMPLETE, 1)

    def test_invalid_answer_is_refused_and_keeps_the_lease(self, project, annotator):
        make_task(project, "rating")
        lease = project.next_assignment(annotator)

        with pytest.raises(ValidationError):
            lease.submit({"score": 99}, user=annotator)

        lease.refresh_from_db()
        assert lease.status == Assignment.Status.ACTIVE
        assert not Annotation.objects.exists()


class TestSkip:
    def test_skip_records_the_skip_and_the_user_is_not_shown_the_task_again(self, project, annotator):
        skipped = make_task(project)
        later = make_task(project)
        lease = project.next_assignment(annotator)
        assert lease.task == skipped

        lease.skip(user=annotator)

        lease.refresh_from_db()
        assert (lease.status, lease.skipped_at is not None) == (Assignment.Status.SKIPPED, True)
        assert project.next_assignment(annotator).task == later

    def test_skip_releases_the_lease_to_others(self, project, annotator, second_annotator):
        task = make_task(project, required=1)
        project.next_assignment(annotator).skip(user=annotator)

        assert project.next_assignment(second_annotator).task == task

    def test_skipping_twice_keeps_the_first_skip(self, project, annotator):
        make_task(project)
        lease = project.next_assignment(annotator)
        lease.skip(user=annotator)
        first_skipped_at = lease.skipped_at

        Assignment.objects.get(pk=lease.pk).skip(user=annotator)

        lease.refresh_from_db()
        assert lease.skipped_at == first_skipped_at

    def test_skipping_someone_elses_lease_is_refused(self, project, annotator, second_annotator):
        make_task(project)
        lease = project.next_assignment(annotator)

        with pytest.raises(LeaseError):
            lease.skip(user=second_annotator)
        lease.refresh_from_db()
        assert lease.status == Assignment.Status.ACTIVE

    def test_skipping_a_submitted_task_is_refused(self, project, annotator):
        make_task(project)
        lease = project.next_assignment(annotator)
        lease.submit(answer_for(lease.task), user=annotator)

        with pytest.raises(LeaseError, match="already submitted"):
            lease.skip(user=annotator)

    def test_submitting_a_skipped_task_is_refused(self, project, annotator):
        make_task(project)
        lease = project.next_assignment(annotator)
        lease.skip(user=annotator)

        with pytest.raises(LeaseError, match="skipped"):
            lease.submit(answer_for(lease.task), user=annotator)
        assert not Annotation.objects.exists()
