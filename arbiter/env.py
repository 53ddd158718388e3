"""Typed readers for environment variables that fail loudly on a bad value."""

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"true", "1"}
_FALSE = {"false", "0", ""}


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise ImproperlyConfigured(f"Set the {name} environment variable.")
    return value


def env_bool(name: str, default: str) -> bool:
    value = env_str(name, default).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use true/false or 1/0.")


def env_int(name: str, default: str, minimum: int | None = None) -> int:
    value = env_str(name, default).strip()
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} is less than {minimum}.")
    return number


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def _option(value: str) -> str | bool:
    # Django's PostgreSQL backend wants real booleans (server_side_binding is compared with `is True`).
    return {"true": True, "false": False}.get(value.lower(), value)


def database_from_url(url: str, base_dir: Path) -> dict:
    """Turn `sqlite:///path` or `postgres://user:pass@host:port/name?opt=v` into a DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///relative/path and sqlite:////absolute/path, as in dj-database-url.
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise ImproperlyConfigured(f"DATABASE_URL={url!r} names no SQLite file.")
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": path if Path(path).is_absolute() else base_dir / path,
            # Waiting on the write lock beats failing with "database is locked" under a worker.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured(f"DATABASE_URL={url!r} names no database.")
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured(f"DATABASE_URL={url!r} has a bad port.") from None
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            # A socket directory may be given as ?host=/path, as libpq allows.
            "HOST": unquote(parts.hostname or ""),
            "PORT": str(port or ""),
            "OPTIONS": {key: _option(value) for key, value in parse_qsl(parts.query)},
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    raise ImproperlyConfigured(
        f"DATABASE_URL={url!r}: unsupported scheme {parts.scheme!r} (use sqlite:/// or postgres://)."
    )
