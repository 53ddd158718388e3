"""docker/: the compose file and the Dockerfile name only what the project has. No Docker engine is needed (or used):
these read the files and check each command, queue, path and variable against the project."""

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from celery.app.utils import find_app
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import get_commands
from django.urls import resolve

ROOT = Path(settings.BASE_DIR)
DOCKER = ROOT / "docker"
COMPOSE_TEXT = (DOCKER / "compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
# Long-running services; each must say how healthy it is. `migrate` is the one one-off (it exits when done).
RUNNING = {"postgres", "redis", "web", "worker", "gpu-worker", "beat", "proxy"}
ONE_OFF = {"migrate"}
TORCH_PIN = re.search(r"torch==([\w.+]+)", (ROOT / "Makefile").read_text()).group(1)  # what dev and CI install


def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Stage name (or its index) -> its instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            named = re.search(r"\bAS\s+(\S+)$", args, re.IGNORECASE)
            current = []
            stages[named.group(1) if named else str(len(stages))] = current
        current.append((keyword, args))
    return stages


def dockerfiles() -> set[Path]:
    return {ROOT / service["build"]["dockerfile"] for service in SERVICES.values() if "build" in service}


STAGES = dockerfile_stages(DOCKER / "Dockerfile")


def env_example_names() -> set[str]:
    """Variables env.example sets or shows (commented lines with `NAME=` document a default)."""
    text = (DOCKER / "env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def service_environment(name: str) -> dict[str, str]:
    environment = SERVICES[name].get("environment") or {}
    assert isinstance(environment, dict), f"{name}: write environment as a mapping"
    return environment


def mounts(name: str) -> dict[str, str]:
    """Named volume -> where it is mounted in the service."""
    found = {}
    for volume in SERVICES[name].get("volumes", []):
        source, target = volume.split(":")[:2]
        found[source] = target
    return found


def argv(command: object) -> list[str]:
    """A command, entrypoint or health check test as an argument list."""
    if isinstance(command, str):
        return shlex.split(command)
    if command and command[0] == "CMD-SHELL":
        return shlex.split(command[1].replace("$$", "$"))
    return list(command[1:] if command and command[0] == "CMD" else command)


def option(args: list[str], *names: str) -> str:
    for index, arg in enumerate(args):
        for name in names:
            if arg == name:
                return args[index + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"{names[0]} missing from {args}")


def routed_queues() -> set[str]:
    return {settings.CELERY_TASK_DEFAULT_QUEUE} | {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}


def check_command(args: list[str], where: str) -> None:
    """Fail unless what `args` runs exists in the project (or is a tool of the image that runs it)."""
    program = args[0]
    if program == "celery":
        app = option(args, "-A", "--app")
        assert find_app(app) is find_app("arbiter.celery:app"), f"{where}: -A {app} is not the project's Celery app"
        subcommand = args[args.index(app) + 1]
        assert subcommand in {"worker", "beat", "inspect"}, f"{where}: celery {subcommand}"
        if subcommand == "worker":
            queues = set(option(args, "-Q", "--queues").split(","))
            assert queues <= routed_queues(), f"{where}: queues {queues} are not in the settings' {routed_queues()}"
    elif program == "python" and args[1] == "manage.py":
        assert args[2] in get_commands(), f"{where}: manage.py has no command {args[2]}"
    elif program == "python" and args[1] == "-c":
        compile(args[2], where, "exec")
    elif program == "gunicorn":
        module, _, attribute = args[1].partition(":")
        assert module == settings.WSGI_APPLICATION.rpartition(".")[0], f"{where}: gunicorn serves {module}"
        assert attribute in ("", "application")
    else:
        # The images' own tools; anything else is new and wants a check here.
        assert program in {"pg_isready", "redis-cli", "redis-server", "wget"}, f"{where}: unknown program {program}"


def commands() -> list[tuple[str, list[str]]]:
    found = []
    for name, service in SERVICES.items():
        for key in ("command", "entrypoint"):
            if key in service:
                found.append((f"{name} {key}", argv(service[key])))
        if "healthcheck" in service:
            found.append((f"{name} healthcheck", argv(service["healthcheck"]["test"])))
    for stage, instructions in STAGES.items():
        for keyword, args in instructions:
            if keyword in ("CMD", "ENTRYPOINT") and args.startswith("["):
                found.append((f"Dockerfile {stage} {keyword}", json.loads(args)))
    return found


class TestServices:
    def test_compose_has_the_whole_stack(self):
        assert set(SERVICES) == RUNNING | ONE_OFF

    def test_every_running_service_has_a_health_check(self):
        for name in RUNNING:
            healthcheck = SERVICES[name].get("healthcheck")
            assert healthcheck and healthcheck.get("test"), f"{name} has no health check"
            assert not healthcheck.get("disable")

    def test_postgres_is_15_and_checked_with_pg_isready(self):
        assert SERVICES["postgres"]["image"].split(":")[1].split(".")[0] == "15"
        assert argv(SERVICES["postgres"]["healthcheck"]["test"])[0] == "pg_isready"
        assert argv(SERVICES["redis"]["healthcheck"]["test"]) == ["redis-cli", "ping"]

    def test_app_services_start_after_migrations(self):
        assert argv(SERVICES["migrate"]["command"])[:3] == ["python", "manage.py", "migrate"]
        assert SERVICES["migrate"]["restart"] == "no"
        for name in ("web", "worker", "gpu-worker", "beat"):
            depends = SERVICES[name]["depends_on"]
            assert depends["migrate"]["condition"] == "service_completed_successfully", name
            assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name

    def test_every_named_volume_is_declared(self):
        for name in SERVICES:
            for source in mounts(name):
                assert source in COMPOSE["volumes"], f"{name} mounts undeclared volume {source}"


class TestCommands:
    @pytest.mark.parametrize("where, args", commands(), ids=[where for where, _ in commands()])
    def test_names_what_the_project_has(self, where, args):
        check_command(args, where)

    def test_each_routed_queue_has_a_worker(self):
        served = {
            queue
            for name in SERVICES
            if (args := argv(SERVICES[name].get("command", []))) and args[:1] == ["celery"] and "worker" in args
            for queue in option(args, "-Q", "--queues").split(",")
        }
        assert served == routed_queues()

    def test_worker_takes_the_default_queue_and_gpu_worker_the_training_queue(self):
        training_queue = settings.CELERY_TASK_ROUTES["training.tasks.run_training_round"]["queue"]
        assert option(argv(SERVICES["worker"]["command"]), "-Q") == settings.CELERY_TASK_DEFAULT_QUEUE
        gpu = argv(SERVICES["gpu-worker"]["command"])
        assert option(gpu, "-Q") == training_queue
        assert option(gpu, "--concurrency", "-c") == "1"
        assert option(gpu, "--prefetch-multiplier") == "1"
        # A solo pool could neither answer the health check's ping during a round nor enforce its time limit.
        assert "solo" not in gpu

    def test_beat_runs_and_a_worker_takes_the_default_queue_where_beat_sends_the_reapers(self):
        # Without both, a job whose worker died stays running for good, and expired leases stay open (README).
        assert argv(SERVICES["beat"]["command"])[:4] == ["celery", "-A", "arbiter", "beat"]
        default = settings.CELERY_TASK_DEFAULT_QUEUE
        assert default in option(argv(SERVICES["worker"]["command"]), "-Q", "--queues").split(",")
        tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
        assert {"training.tasks.fail_stale_rounds", "annotate.tasks.fail_stale_exports"} <= tasks
        assert "annotate.tasks.fail_stale_imports" in tasks
        for entry in settings.CELERY_BEAT_SCHEDULE.values():
            assert entry["task"] not in settings.CELERY_TASK_ROUTES and "queue" not in entry.get("options", {})

    def test_make_run_starts_a_worker_for_every_queue_with_beat_inside(self):
        makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
        recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
        command = re.search(r"/celery (.*?)[>&]", recipe).group(1)
        args = ["celery", *shlex.split(command)]
        check_command(args, "make run")
        assert args[:4] == ["celery", "-A", "arbiter", "worker"] and "--beat" in args
        assert set(option(args, "-Q", "--queues").split(",")) == routed_queues()

    def test_make_run_serves_and_seeds_on_the_port_given(self):
        shown = subprocess.run(
            ["make", "-n", "-o", ".venv/.installed", "run", "PORT=8001"], cwd=ROOT, capture_output=True, text=True
        )
        assert shown.returncode == 0, shown.stderr
        assert "runserver 127.0.0.1:8001" in shown.stdout and "seed_demo --port 8001" in shown.stdout
        assert "8000" not in shown.stdout

    def test_worker_health_checks_ping_their_own_node(self):
        for name in ("worker", "gpu-worker"):
            args = argv(SERVICES[name]["healthcheck"]["test"])
            assert args[args.index("-A") + 2 :][:2] == ["inspect", "ping"], name
            assert option(args, "--destination", "-d") == "celery@$HOSTNAME", name

    def test_web_health_check_asks_for_the_login_page_as_the_proxies_do(self):
        code = argv(SERVICES["web"]["healthcheck"]["test"])[2]
        url = re.search(r"'http://127\.0\.0\.1:8000(/[^']*)'", code).group(1)
        assert resolve(url).url_name == "login"
        assert "X-Forwarded-Proto" in code and "ALLOWED_HOSTS" in code
        assert "0.0.0.0:8000" in SERVICES["web"]["command"]

    def test_login_page_answers_without_database_or_session_in_production(self):
        """What the web health check relies on, with production settings and a database that is not there."""
        host = re.search(r"^ALLOWED_HOSTS=([^,\n]+)", (DOCKER / "env.example").read_text(), re.MULTILINE).group(1)
        script = (
            "import django; django.setup()\n"
            "from django.test import Client\n"
            f"response = Client().get('/login/', headers={{'host': {host!r}, 'x-forwarded-proto': 'https'}})\n"
            "print(response.status_code)\n"
        )
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DJANGO_SETTINGS_MODULE": "arbiter.settings",
            "DEBUG": "false",
            "SECRET_KEY": "health-check-test-" + "x" * 50,
            "ALLOWED_HOSTS": host,
            "SECURE_PROXY_SSL_HEADER": "true",
            "DATABASE_URL": "postgres://nobody:nothing@127.0.0.1:9/nowhere?connect_timeout=1",
        }
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip().splitlines()[-1] == "200"

    def test_beat_keeps_its_schedule_in_a_volume_its_health_check_reads(self):
        schedule = option(argv(SERVICES["beat"]["command"]), "--schedule", "-s")
        assert os.path.dirname(schedule) in mounts("beat").values()
        assert f"'{schedule}*'" in argv(SERVICES["beat"]["healthcheck"]["test"])[2]

    def test_proxy_health_check_fetches_a_collected_static_file(self):
        url = argv(SERVICES["proxy"]["healthcheck"]["test"])[-1]
        path = url.split("/static/", 1)[1]
        assert finders.find(path), f"{path} is not a static file"


class TestVolumes:
    def test_media_and_artifacts_are_shared_where_the_settings_look(self):
        for name in ("web", "worker", "gpu-worker"):
            env, mounted = service_environment(name), mounts(name)
            assert mounted["media"] == env["MEDIA_ROOT"], name
            assert mounted["artifacts"] == env["ARBITER_ARTIFACTS_ROOT"], name

    def test_gpu_worker_caches_models_in_a_volume(self):
        assert mounts("gpu-worker")["hf-cache"] == service_environment("gpu-worker")["HF_HOME"]

    def test_databases_keep_their_data(self):
        assert mounts("postgres")["postgres-data"] == "/var/lib/postgresql/data"
        assert mounts("redis")["redis-data"] == "/data"


class TestGpuWorker:
    def test_reserves_an_nvidia_gpu(self):
        devices = SERVICES["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)

    def test_cuda_image_installs_the_pinned_torch_from_the_cuda_index_before_the_project(self):
        build = SERVICES["gpu-worker"]["build"]
        instructions = STAGES[build["target"]]
        runs = [args for keyword, args in instructions if keyword == "RUN"]
        torch = next(index for index, args in enumerate(runs) if "torch==" in args)
        project = next(index for index, args in enumerate(runs) if "pip install -e" in args)
        assert torch < project
        assert f"torch=={TORCH_PIN} " in runs[torch] + " "
        assert "https://download.pytorch.org/whl/${TORCH_CUDA}" in runs[torch]
        default = next(args for keyword, args in instructions if keyword == "ARG" and args.startswith("TORCH_CUDA="))
        assert re.fullmatch(r"TORCH_CUDA=cu\d+", default)
        assert re.fullmatch(r"\$\{TORCH_CUDA:-cu\d+\}", build["args"]["TORCH_CUDA"])

    def test_app_image_carries_no_training_library(self):
        # The web process needs none (tests/training/test_web_without_torch.py); only the gpu image trains.
        runs = " ".join(args for keyword, args in STAGES["app"] if keyword == "RUN")
        assert "pip install -e . " in runs + " "
        assert "torch" not in runs
        assert "[train]" not in runs


class TestDockerfiles:
    def test_compose_builds_targets_the_dockerfile_has(self):
        for name, service in SERVICES.items():
            if "build" in service:
                context = (DOCKER / service["build"]["context"]).resolve()
                assert context == ROOT.resolve(), f"{name}: build from the repository root"
                assert (context / service["build"]["dockerfile"]) == (DOCKER / "Dockerfile").resolve(), name
                assert service["build"]["target"] in STAGES, name

    def test_copy_sources_exist(self):
        for path in dockerfiles():
            for stage, instructions in dockerfile_stages(path).items():
                for keyword, args in instructions:
                    if keyword not in ("COPY", "ADD") or "--from=" in args:
                        continue
                    sources = [arg for arg in shlex.split(args) if not arg.startswith("--")][:-1]
                    for source in sources:
                        assert (ROOT / source).exists(), f"{path.name} {stage}: COPY {source} is not in the repository"

    def test_dockerignore_keeps_what_the_image_needs(self):
        patterns = [
            line.strip()
            for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        for needed in ("manage.py", "pyproject.toml", "arbiter", "templates", "static", "docker/nginx.conf"):
            assert not any(fnmatch.fnmatch(needed, pattern) for pattern in patterns), needed

    def test_images_get_the_code_version_from_a_build_argument(self):
        for target in ("app", "gpu"):
            instructions = STAGES[target]
            assert ("ARG", 'ARBITER_CODE_VERSION=""') in instructions, target
            assert any(k == "ENV" and "ARBITER_CODE_VERSION=${ARBITER_CODE_VERSION}" in a for k, a in instructions)
        for name in ("web", "gpu-worker"):
            assert SERVICES[name]["build"]["args"]["ARBITER_CODE_VERSION"] == "${ARBITER_CODE_VERSION:-}"


class TestEnvExample:
    def test_lists_every_variable_compose_reads(self):
        def strings(node: object) -> list[str]:
            if isinstance(node, dict):
                return [text for key, value in node.items() for text in strings(key) + strings(value)]
            if isinstance(node, list):
                return [text for item in node for text in strings(item)]
            return [node] if isinstance(node, str) else []

        # Compose interpolates every string of the file ($$ is a literal $, left to the container's shell).
        text = "\n".join(strings(COMPOSE)).replace("$$", "")
        referenced = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))
        assert referenced, "the pattern found nothing"
        assert referenced <= env_example_names(), f"not in env.example: {sorted(referenced - env_example_names())}"

    def test_lists_every_variable_the_settings_read(self):
        source = (ROOT / "arbiter" / "settings.py").read_text()
        read = set(re.findall(r"\b(?:env_str|env_int|env_bool|env_list|_env_rate)\(\s*\"([A-Z0-9_]+)\"", source))
        assert len(read) > 20, "the pattern found too little"
        development_only = {"CELERY_TASK_ALWAYS_EAGER"}
        missing = read - development_only - env_example_names()
        assert not missing, f"settings read these, env.example does not mention them: {sorted(missing)}"
