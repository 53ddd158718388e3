"""The training engine: torch, transformers, peft and TRL code, and never Django.

The Celery tasks in `training/` turn database rows into the config dataclasses defined here and call these
modules; everything here can run (and is tested) without a database or settings. `config.py` (the config dataclasses)
imports none of the training libraries, so the web process reads and checks configs without them.
"""
