"""Imports running at the same time on PostgreSQL: never a duplicate prompt, never an unhandled error."""

import json
import threading

import pytest
from django.db import connection

from annotate.importing import ImportFailed, import_file
from annotate.models import Prompt, Task

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_concurrent_imports_of_one_file_create_each_prompt_once(project, tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"Question {i}?", "responses": [f"yes {i}", f"no {i}"]} for i in range(3000)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    start = threading.Barrier(4)
    outcomes: list[str] = []

    def run() -> None:
        start.wait()
        try:
            result = import_file(project, path)
            outcomes.append(f"created {result.prompts_created}")
        except ImportFailed as error:
            outcomes.append(str(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(outcomes) == 4, outcomes
    assert Prompt.objects.count() == 3000
    assert Task.objects.count() == 3000 * 3  # two rating tasks and one pairwise task per prompt
    assert outcomes.count("created 3000") == 1
    assert all(
        outcome in {"created 0", "created 3000"} or "another import added the same prompts" in outcome
        for outcome in outcomes
    ), outcomes
