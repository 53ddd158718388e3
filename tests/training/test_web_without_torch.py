"""The web process runs without the training stack: its pages, API, admin launch form and round checks import no
torch, transformers, peft, TRL, accelerate or datasets (the app image leaves them out)."""

import subprocess
import sys

from django.conf import settings

HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")

LOAD_THE_WEB_PROCESS = f"""
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.settings")
from arbiter.wsgi import application  # django.setup(): every app, the admin's registrations
from django.urls import get_resolver
from training.admin import LaunchForm  # noqa: F401
from training.rounds import build_config, stage_configs
import training.engine.config

get_resolver().url_patterns  # every view module
build_config(["reward", "ppo", "sample"], base_model="org/name", policy_path="org/name", settings_={{"lora_r": "8"}})
print(sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY!r})))
"""


def test_web_process_imports_no_training_library():
    done = subprocess.run(
        [sys.executable, "-c", LOAD_THE_WEB_PROCESS],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
