"""The heartbeat that long jobs (exports, import jobs, training rounds) beat from a thread of their own."""

import time

from django.db import OperationalError

from annotate.jobs import Heartbeat, hide_paths


def test_beats_until_stopped_and_a_missed_beat_does_not_stop_it():
    beats = []

    def beat():
        beats.append(time.monotonic())
        if len(beats) == 1:
            raise OperationalError("database is locked")  # SQLite's one writer busy, or a lost connection

    with Heartbeat(beat, 0.01, name="heartbeat-test") as heartbeat:
        deadline = time.monotonic() + 10
        while len(beats) < 3:
            assert time.monotonic() < deadline and heartbeat.is_alive(), beats
            time.sleep(0.01)
    assert not heartbeat.is_alive()
    stopped_at = len(beats)
    time.sleep(0.05)
    assert len(beats) == stopped_at


def test_hides_server_paths_but_keeps_urls():
    error = "endpoint http://127.0.0.1:8000/v1 refused model /srv/models/judge (500); see ~/log and ./x/y"
    assert hide_paths(error) == "endpoint http://127.0.0.1:8000/v1 refused model <path> (500); see <path> and <path>"
