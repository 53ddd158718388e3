"""Settings come from the environment: bad values fail loudly, and a production configuration is clean."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from arbiter.env import cache_from_url, database_from_url, env_bool, env_int, env_list, env_str

BASE_DIR = Path(settings.BASE_DIR)


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run manage.py with exactly `env` on top of PATH, so the parent's DATABASE_URL and friends cannot leak in."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def sqlite_env(tmp_path):
    return {"DATABASE_URL": f"sqlite:///{tmp_path}/arbiter.sqlite3", "ARBITER_VAR_DIR": str(tmp_path)}


@pytest.fixture
def production_env(sqlite_env):
    return {
        **sqlite_env,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "arbiter.example.com",
    }


class TestEnvReaders:
    def test_bool_accepts_true_false_and_digits(self, monkeypatch):
        for value, expected in [("true", True), ("True", True), ("1", True), ("false", False), ("0", False)]:
            monkeypatch.setenv("ARBITER_TEST_VALUE", value)
            assert env_bool("ARBITER_TEST_VALUE", "false") is expected

    def test_bool_refuses_yes_naming_the_variable(self, monkeypatch):
        monkeypatch.setenv("ARBITER_TEST_VALUE", "yes")
        with pytest.raises(ImproperlyConfigured, match="ARBITER_TEST_VALUE='yes'"):
            env_bool("ARBITER_TEST_VALUE", "false")

    def test_bool_uses_default_when_unset(self, monkeypatch):
        monkeypatch.delenv("ARBITER_TEST_VALUE", raising=False)
        assert env_bool("ARBITER_TEST_VALUE", "True") is True

    def test_int_accepts_digits(self, monkeypatch):
        monkeypatch.setenv("ARBITER_TEST_VALUE", " 42 ")
        assert env_int("ARBITER_TEST_VALUE", "0") == 42

    def test_int_refuses_trailing_junk_naming_the_variable(self, monkeypatch):
        monkeypatch.setenv("ARBITER_TEST_VALUE", "3x")
        with pytest.raises(ImproperlyConfigured, match="ARBITER_TEST_VALUE='3x'"):
            env_int("ARBITER_TEST_VALUE", "0")

    def test_int_below_its_minimum_is_refused_naming_the_variable(self, monkeypatch):
        monkeypatch.setenv("ARBITER_TEST_VALUE", "0")
        with pytest.raises(ImproperlyConfigured, match="ARBITER_TEST_VALUE='0': must be at least 1"):
            env_int("ARBITER_TEST_VALUE", "3", minimum=1)

    def test_list_splits_on_commas_and_drops_blanks(self, monkeypatch):
        monkeypatch.setenv("ARBITER_TEST_VALUE", " a.example.com, b.example.com,, ")
        assert env_list("ARBITER_TEST_VALUE", "") == ["a.example.com", "b.example.com"]

    def test_list_of_nothing_is_empty(self, monkeypatch):
        monkeypatch.delenv("ARBITER_TEST_VALUE", raising=False)
        assert env_list("ARBITER_TEST_VALUE", "") == []

    def test_required_value_names_the_variable_when_missing(self, monkeypatch):
        monkeypatch.delenv("ARBITER_TEST_VALUE", raising=False)
        with pytest.raises(ImproperlyConfigured, match="ARBITER_TEST_VALUE"):
            env_str("ARBITER_TEST_VALUE")


class TestDatabaseFromUrl:
    def test_sqlite_relative_path_is_under_base_dir(self, tmp_path):
        db = database_from_url("sqlite:///var/arbiter.sqlite3", tmp_path)
        assert db["ENGINE"] == "django.db.backends.sqlite3"
        assert Path(db["NAME"]) == tmp_path / "var" / "arbiter.sqlite3"

    def test_sqlite_absolute_path_is_kept(self, tmp_path):
        db = database_from_url("sqlite:////srv/arbiter/db.sqlite3", tmp_path)
        assert Path(db["NAME"]) == Path("/srv/arbiter/db.sqlite3")

    def test_postgres_url_with_escaped_password_and_options(self, tmp_path):
        url = "postgres://arbiter:p%40ss%2Fw%3Ard@db.example.com:6543/arbiter_prod?sslmode=require&connect_timeout=5&server_side_binding=true"
        db = database_from_url(url, tmp_path)
        assert db["ENGINE"] == "django.db.backends.postgresql"
        assert (db["USER"], db["PASSWORD"]) == ("arbiter", "p@ss/w:rd")
        assert (db["HOST"], db["PORT"], db["NAME"]) == ("db.example.com", "6543", "arbiter_prod")
        # Django compares some options with `is True`, so true/false arrive as booleans.
        assert db["OPTIONS"] == {"sslmode": "require", "connect_timeout": "5", "server_side_binding": True}

    def test_postgres_socket_directory_as_host_option(self, tmp_path):
        db = database_from_url("postgresql:///arbiter?host=/var/run/postgresql", tmp_path)
        assert (db["HOST"], db["PORT"], db["USER"]) == ("", "", "")
        assert db["OPTIONS"] == {"host": "/var/run/postgresql"}

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("mysql://user@host/arbiter", "unsupported scheme 'mysql'"),
            ("arbiter.sqlite3", "unsupported scheme ''"),
            ("sqlite:///", "names no SQLite file"),
            ("postgres://user@db.example.com/", "names no database"),
            ("postgres://user@db.example.com:port/arbiter", "bad port"),
        ],
    )
    def test_refuses_what_it_cannot_use(self, tmp_path, url, message):
        with pytest.raises(ImproperlyConfigured, match=message):
            database_from_url(url, tmp_path)


class TestCacheFromUrl:
    def test_redis_file_and_locmem(self):
        assert cache_from_url("redis://cache:6379/1")["BACKEND"].endswith("RedisCache")
        assert cache_from_url("file:///srv/arbiter/cache") == {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": "/srv/arbiter/cache",
        }
        assert cache_from_url("locmem://")["BACKEND"].endswith("LocMemCache")

    @pytest.mark.parametrize(
        "url, message", [("memcached://x:11211", "unsupported scheme 'memcached'"), ("file://cache", "absolute")]
    )
    def test_refuses_what_it_cannot_use_naming_the_variable(self, url, message):
        with pytest.raises(ImproperlyConfigured, match=f"CACHE_URL=.*{message}"):
            cache_from_url(url)


# Counts a `login`-scoped throttle's verdicts for one address, in a process of its own (a gunicorn worker's stand-in).
_THROTTLE_IN_A_PROCESS = """
from django.test import RequestFactory
from rest_framework.throttling import ScopedRateThrottle
class View:
    throttle_scope = "login"
from django.contrib.auth.models import AnonymousUser
request = RequestFactory().post("/api/v1/auth/token/", REMOTE_ADDR="10.9.9.9")
request.user = AnonymousUser()
print(sum(ScopedRateThrottle().allow_request(request, View()) for _ in range(6)))
"""


class TestSharedCache:
    def test_throttle_counts_are_shared_by_every_process(self, sqlite_env):
        # The login rate is 10/min: two processes of six attempts each let ten through between them, not twelve.
        env = {**sqlite_env, "ARBITER_THROTTLE_LOGIN": "10/min"}
        allowed = [int(manage("shell", "--no-imports", "-c", _THROTTLE_IN_A_PROCESS, env=env).stdout) for _ in range(2)]
        assert allowed == [6, 4]

    def test_the_brokers_redis_is_the_cache_unless_cache_url_says_otherwise(self, sqlite_env):
        show = "from django.conf import settings; print(settings.CACHES['default'].get('LOCATION'))"
        redis = {**sqlite_env, "CELERY_BROKER_URL": "redis://broker:6379/0"}
        assert manage("shell", "--no-imports", "-c", show, env=redis).stdout.strip() == "redis://broker:6379/0"
        own = {**redis, "CACHE_URL": "redis://cache:6379/2"}
        assert manage("shell", "--no-imports", "-c", show, env=own).stdout.strip() == "redis://cache:6379/2"
        assert (
            manage("shell", "--no-imports", "-c", show, env=sqlite_env).stdout.strip()
            == f"{sqlite_env['ARBITER_VAR_DIR']}/cache"
        )


class TestManagementChecks:
    def test_production_configuration_passes_deploy_check_without_warnings(self, production_env):
        result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "WARNINGS" not in output
        assert "no issues" in output

    def test_production_without_secret_key_refuses_to_start(self, production_env):
        del production_env["SECRET_KEY"]
        result = manage("check", env=production_env)
        assert result.returncode != 0
        assert "ImproperlyConfigured" in result.stderr
        assert "SECRET_KEY" in result.stderr

    @pytest.mark.parametrize("prefix", ["ARBITER_ROUND", "ARBITER_JOB"])
    def test_a_heartbeat_no_shorter_than_its_timeout_refuses_to_start(self, sqlite_env, prefix):
        # Every live job would be failed as dead between two of its beats.
        result = manage("check", env={**sqlite_env, f"{prefix}_HEARTBEAT_SECONDS": "120"})
        assert result.returncode != 0
        assert f"{prefix}_HEARTBEAT_SECONDS must be below {prefix}_HEARTBEAT_TIMEOUT" in result.stderr

    def test_a_relative_model_root_refuses_to_start(self, sqlite_env):
        result = manage("check", env={**sqlite_env, "ARBITER_MODEL_ROOTS": "/srv/models, models"})
        assert result.returncode != 0
        assert "ARBITER_MODEL_ROOTS: models is not an absolute path" in result.stderr

    def test_production_with_the_development_key_refuses_to_start(self, production_env):
        production_env["SECRET_KEY"] = "insecure-development-key-do-not-use-in-production"
        result = manage("check", env=production_env)
        assert result.returncode != 0
        assert "SECRET_KEY is the development key" in result.stderr

    def test_models_and_migrations_agree(self, sqlite_env):
        result = manage("makemigrations", "--check", "--dry-run", env=sqlite_env)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_more_launch_machines_without_a_hostfile_and_address_refuse_to_start(self, sqlite_env):
        result = manage("check", env={**sqlite_env, "ARBITER_LAUNCH_MACHINES": "2"})
        assert result.returncode != 0
        assert "ARBITER_LAUNCH_MACHINES > 1 needs ARBITER_LAUNCH_HOSTFILE" in result.stderr
        given = {"ARBITER_LAUNCH_HOSTFILE": "/etc/arbiter/hosts", "ARBITER_LAUNCH_MAIN_ADDRESS": "10.0.0.1:29500"}
        assert manage("check", env={**sqlite_env, "ARBITER_LAUNCH_MACHINES": "2", **given}).returncode == 0
