"""Arbiter: the project package (settings, urls, Celery app, WSGI/ASGI)."""

from arbiter.celery import app as celery_app

__all__ = ["celery_app"]
