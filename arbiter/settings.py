"""The one settings module: every value comes from the environment, with embedded defaults for development."""

import re
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from arbiter.env import cache_from_url, database_from_url, env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("ARBITER_VAR_DIR", str(BASE_DIR / "var")))

# Embedded development defaults; production sets DEBUG=false and must then give a real SECRET_KEY.
DEBUG = env_bool("DEBUG", "True")
_DEV_SECRET_KEY = "insecure-development-key-do-not-use-in-production"
SECRET_KEY = env_str("SECRET_KEY", _DEV_SECRET_KEY if DEBUG else None)
if not DEBUG and SECRET_KEY == _DEV_SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY is the development key: set a real one when DEBUG is off.")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI as static files: the docs page loads nothing from a CDN
    "axes",  # failed-login lockout
    "annotate",
    "training",
    "models_registry",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "arbiter.middleware.ContentSecurityPolicyMiddleware",  # Django 6.0: django.middleware.csp.…
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: turns a login that django-axes refused into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "arbiter.urls"
WSGI_APPLICATION = "arbiter.wsgi.application"
ASGI_APPLICATION = "arbiter.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_from_url(env_str("DATABASE_URL", "sqlite:///var/arbiter.sqlite3"), BASE_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes first: it refuses a locked-out username or address before any password is checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# People: invitation links and email (password reset, invitations sent by email). The console backend prints mail
# to the server's output, for development; production sets an SMTP backend and its host.
ARBITER_INVITATION_DAYS = env_int("ARBITER_INVITATION_DAYS", "7", minimum=1)
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", "25", minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", "False")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "arbiter@localhost")
PASSWORD_RESET_TIMEOUT = 3 * 24 * 3600  # Django's default, said here: a reset link works for three days

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
# Uploaded import files can be large; Django streams anything over this to a temp file.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# Production hardening: on whenever DEBUG is off, each switchable for a TLS-terminating proxy setup.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", str(not DEBUG))
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", str(not DEBUG))
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", str(not DEBUG))
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", "0" if DEBUG else "31536000")
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", str(not DEBUG))
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", str(not DEBUG))
if env_bool("SECURE_PROXY_SSL_HEADER", "False"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# What a page may load and run (arbiter/middleware.py; Django 6.0's SECURE_CSP shape). Scripts and styles come
# from this site's files only, nothing inline and no eval: markup that slipped into a page (model text the
# sanitiser missed) could not run. Report-only sends the same policy without enforcing it, to try it on a setup.
_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
    "report-uri": env_list("ARBITER_CSP_REPORT_URI", ""),
}
_CSP_REPORT_ONLY = env_bool("ARBITER_CSP_REPORT_ONLY", "False")
SECURE_CSP = {} if _CSP_REPORT_ONLY else _CSP
SECURE_CSP_REPORT_ONLY = _CSP if _CSP_REPORT_ONLY else {}
# No script reads the CSRF token from the cookie: htmx sends it from <body hx-headers>, forms from their field.
CSRF_COOKIE_HTTPONLY = True
# Model text longer than this, or a task's texts longer than this together, is shown plain rather than formatted
# as Markdown (annotate/templatetags/arbiter_markdown.py): formatting costs up to ~13 µs of CPU a character.
ARBITER_MARKDOWN_MAX_CHARS = env_int("ARBITER_MARKDOWN_MAX_CHARS", "32000", minimum=0)

# Celery: an embedded filesystem broker by default (a real `celery worker` consumes it, no server needed).
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "celery-broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_DEFAULT_QUEUE = "default"  # everything but training
CELERY_TASK_ROUTES = {"training.tasks.run_training_round": {"queue": "gpu"}}  # `celery worker -Q gpu` on GPU hosts
CELERY_TASK_IGNORE_RESULT = True  # results live in our tables, not in a result backend
# A training message is acknowledged when the round ends, so a worker lost mid-round leaves it to redeliver (the
# round's conditional claim then refuses to run it twice); one message at a time, so a busy GPU worker does not
# hold rounds that another could start.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# How often beat looks for projects with new answers and refreshes their quality figures (the Quality page).
ARBITER_QUALITY_REFRESH_MINUTES = env_int("ARBITER_QUALITY_REFRESH_MINUTES", "10", minimum=1)
# Beat sends these to the default queue: without beat and a worker on that queue, leases stay open in the tables and
# jobs whose worker died stay running (README, Deploying).
CELERY_BEAT_SCHEDULE = {
    # The queue already ignores expired leases; this closes them so the tables say what happened.
    "expire-leases": {"task": "annotate.tasks.expire_leases", "schedule": 300.0},
    "fail-stale-rounds": {"task": "training.tasks.fail_stale_rounds", "schedule": 60.0},
    "fail-stale-exports": {"task": "annotate.tasks.fail_stale_exports", "schedule": 60.0},
    "fail-stale-imports": {"task": "annotate.tasks.fail_stale_imports", "schedule": 60.0},
    "fail-stale-judge-runs": {"task": "annotate.tasks.fail_stale_judge_runs", "schedule": 60.0},
    # The counters are kept exact as tasks change; this finds and repairs what changed past them (raw SQL, a shell).
    "recount-task-counters": {"task": "annotate.tasks.recount_task_counters", "schedule": 3600.0},
    # The Quality page's figures, for the projects with new answers since the last look (annotate/quality_reports.py).
    "refresh-quality": {
        "task": "annotate.tasks.refresh_quality_reports",
        "schedule": 60.0 * ARBITER_QUALITY_REFRESH_MINUTES,
    },
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", "False")

# The cache holds the API's throttle counts: every web process must share it, or each gunicorn worker counts for
# itself and a limit lets through as many times its rate as there are workers. CACHE_URL names one; without it,
# the broker's Redis when the broker is Redis, else files under var/ that the processes of one machine share.
_cache_url = env_str("CACHE_URL", "")
if not _cache_url and CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    _cache_url = CELERY_BROKER_URL
CACHES = {
    "default": cache_from_url(_cache_url)
    if _cache_url
    else {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(VAR_DIR / "cache")}
}

# Failed logins, on every path that checks a password (/login/, /admin/login/, POST /api/v1/auth/token/), with
# django-axes: ARBITER_LOGIN_FAILURE_LIMIT failures for one username, or from one address, lock that username or
# that address out until ARBITER_LOGIN_LOCKOUT_MINUTES have passed since the last counted failure. Attempts are
# kept in the database, which every process shares, and listed in the admin.
AXES_FAILURE_LIMIT = env_int("ARBITER_LOGIN_FAILURE_LIMIT", "10", minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("ARBITER_LOGIN_LOCKOUT_MINUTES", "15", minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one reaching the limit locks it
# Attempts during a lockout are refused without being counted, so a lockout always ends on time.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A success does not wipe the failures: it would wipe the address's count too, so an attacker holding one account
# could log into it between guesses at another's password.
AXES_RESET_ON_SUCCESS = False
AXES_CLIENT_IP_CALLABLE = "arbiter.api_defaults.client_address"  # the throttles' address: ARBITER_NUM_PROXIES
AXES_LOCKOUT_CALLABLE = "annotate.views.locked_out"  # the page (or the API's JSON) that says so, with a 429
AXES_DISABLE_ACCESS_LOG = True  # no row per successful login
AXES_VERBOSE = False  # no banner on every manage.py command

# Training rounds (training/rounds.py).
ARBITER_ARTIFACTS_ROOT = Path(env_str("ARBITER_ARTIFACTS_ROOT", str(VAR_DIR / "artifacts")))  # adapters, checkpoints
ARBITER_DEFAULT_BASE_MODEL = env_str("ARBITER_DEFAULT_BASE_MODEL", "")  # a round's base when the project has none
ARBITER_CODE_VERSION = env_str("ARBITER_CODE_VERSION", "")  # the git sha, where the image has no .git


def _heartbeat(prefix: str) -> tuple[int, timedelta]:
    """<prefix>_HEARTBEAT_SECONDS between a running job's beats, and <prefix>_HEARTBEAT_TIMEOUT of silence after which
    beat fails it (the worker was killed, ran out of memory or lost its machine): below it, or live jobs fail."""
    seconds = env_int(f"{prefix}_HEARTBEAT_SECONDS", "10", minimum=1)
    timeout = env_int(f"{prefix}_HEARTBEAT_TIMEOUT", "120", minimum=1)
    if seconds >= timeout:
        raise ImproperlyConfigured(f"{prefix}_HEARTBEAT_SECONDS must be below {prefix}_HEARTBEAT_TIMEOUT.")
    return seconds, timedelta(seconds=timeout)


ARBITER_ROUND_HEARTBEAT_SECONDS, ARBITER_ROUND_HEARTBEAT_TIMEOUT = _heartbeat("ARBITER_ROUND")
ARBITER_ROUND_TIME_LIMIT = env_int("ARBITER_ROUND_TIME_LIMIT", str(24 * 3600))  # seconds; the worker kills it after
# What a lead may name as a round's base besides the project's own versions (training/rounds.py resolve_base):
# hub ids (org/name), and local paths under these absolute directories (none by default). ARBITER_ARTIFACTS_ROOT
# is never one: it holds every project's adapters, which a project reaches by version name.
ARBITER_ALLOW_HUB_MODELS = env_bool("ARBITER_ALLOW_HUB_MODELS", "True")
ARBITER_MODEL_ROOTS = [Path(root) for root in env_list("ARBITER_MODEL_ROOTS", "")]
if relative := [str(root) for root in ARBITER_MODEL_ROOTS if not root.is_absolute()]:
    raise ImproperlyConfigured(f"ARBITER_MODEL_ROOTS: {', '.join(relative)} is not an absolute path.")
# Per project: rounds queued or running, and exports pending or running that people asked for; more are refused.
ARBITER_MAX_ACTIVE_ROUNDS = env_int("ARBITER_MAX_ACTIVE_ROUNDS", "3", minimum=1)
# How often a worker on the gpu queue reports its GPUs (training/workers.py); the launch checks a round's memory
# estimate against reports younger than three intervals.
ARBITER_WORKER_REPORT_SECONDS = env_int("ARBITER_WORKER_REPORT_SECONDS", "60", minimum=1)
# Stages launched with a DeepSpeed preset (launch=zero2/zero3) may span this many machines: accelerate starts the
# other nodes itself over pdsh from a DeepSpeed hostfile (one `host slots=N` line per machine, the worker's first).
ARBITER_LAUNCH_MACHINES = env_int("ARBITER_LAUNCH_MACHINES", "1", minimum=1)
ARBITER_LAUNCH_HOSTFILE = env_str("ARBITER_LAUNCH_HOSTFILE", "")
ARBITER_LAUNCH_MAIN_ADDRESS = env_str("ARBITER_LAUNCH_MAIN_ADDRESS", "")  # host:port of the worker's machine
if ARBITER_LAUNCH_MACHINES > 1 and not (ARBITER_LAUNCH_HOSTFILE and ARBITER_LAUNCH_MAIN_ADDRESS.count(":") == 1):
    raise ImproperlyConfigured(
        "ARBITER_LAUNCH_MACHINES > 1 needs ARBITER_LAUNCH_HOSTFILE and ARBITER_LAUNCH_MAIN_ADDRESS (host:port)."
    )
ARBITER_MAX_ACTIVE_EXPORTS = env_int("ARBITER_MAX_ACTIVE_EXPORTS", "5", minimum=1)

# Imports: the most a file may hold (decompressed, for gzip), and one text in it (a prompt, a response, metadata as
# JSON; a row may hold 8 such texts: annotate/importing.py); uploads up to ARBITER_IMPORT_INLINE_BYTES (a gzip file:
# what it unpacks to) are imported in the request, bigger ones in a worker, as an ImportJob.
ARBITER_IMPORT_MAX_BYTES = env_int("ARBITER_IMPORT_MAX_BYTES", str(512 * 1024 * 1024), minimum=1)
ARBITER_IMPORT_MAX_FIELD_BYTES = env_int("ARBITER_IMPORT_MAX_FIELD_BYTES", str(1024 * 1024), minimum=1)
ARBITER_IMPORT_INLINE_BYTES = env_int("ARBITER_IMPORT_INLINE_BYTES", str(5 * 1024 * 1024), minimum=0)

# Exports and import jobs (annotate/jobs.py).
ARBITER_JOB_HEARTBEAT_SECONDS, ARBITER_JOB_HEARTBEAT_TIMEOUT = _heartbeat("ARBITER_JOB")

ARBITER_DEFAULT_LEASE = timedelta(minutes=30)

# The API (views in each app's api.py, shared plumbing in arbiter/api.py): bearer tokens for scripts, the session for
# the browser; JSON only.
_THROTTLE_RATE = re.compile(r"^\d+/(s|sec|second|m|min|minute|h|hour|d|day)$")


def _env_rate(name: str, default: str) -> str:
    """A DRF throttle rate such as 10/min, checked at startup rather than on the first throttled request."""
    value = env_str(name, default).strip()
    if not _THROTTLE_RATE.match(value):
        raise ImproperlyConfigured(f"{name}={value!r} is not a rate: use <number>/<s|min|hour|day>, e.g. 10/min.")
    return value


REST_FRAMEWORK = {
    # Bearer first: its WWW-Authenticate header is what turns an anonymous request into 401, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "arbiter.api_defaults.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "arbiter.api_defaults.IdCursorPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Only views that name a throttle_scope are throttled, and only their writes.
    "DEFAULT_THROTTLE_CLASSES": ["arbiter.api_defaults.WriteThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "login": _env_rate("ARBITER_THROTTLE_LOGIN", "10/min"),
        "submit": _env_rate("ARBITER_THROTTLE_SUBMIT", "120/min"),
        # Launching rounds (and relaunching them), and starting exports: per user, whatever the project.
        "launch": _env_rate("ARBITER_THROTTLE_LAUNCH", "30/hour"),
        "export": _env_rate("ARBITER_THROTTLE_EXPORT", "60/hour"),
    },
    "EXCEPTION_HANDLER": "arbiter.api.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",  # APIClient in tests speaks what scripts speak
    # Throttles key anonymous clients by address. 0 trusts no X-Forwarded-For (a client could make up a new
    # address per login attempt); behind proxies, their count, so the address the nearest one saw is used.
    "NUM_PROXIES": env_int("ARBITER_NUM_PROXIES", "0"),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Arbiter API",
    "DESCRIPTION": (
        "Annotate, import and export RLHF data from scripts. Authenticate with `Authorization: Bearer <token>` "
        "(make a token at /tokens/ or with POST /api/v1/auth/token/)."
    ),
    "VERSION": "1",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # Request bodies get their own components (TokenRequest next to Token), so read-only fields stay out of them.
    "COMPONENT_SPLIT_REQUEST": True,
    # What Django's path converters match, so clients (and the fuzzer in tests/api) send routable paths.
    "PATH_CONVERTER_OVERRIDES": {
        "slug": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$"},
        "int": {"type": "integer", "minimum": 0},
    },
    # Fields named alike (kind, format) take different choices; each set gets a name of its own.
    "ENUM_NAME_OVERRIDES": {
        "AnnotationSourceEnum": "annotate.models.Annotation.Source",
        "TaskKindEnum": "annotate.models.TaskKind",
        "ExportKindEnum": "annotate.models.DatasetSnapshot.Kind",
        "ExportFormatEnum": "annotate.models.DatasetSnapshot.Format",
        "ImportFormatEnum": "annotate.importing.FORMATS",
        "SnapshotStatusEnum": "annotate.models.DatasetSnapshot.Status",
        "ImportStatusEnum": "annotate.models.ImportJob.Status",
        "QualityStatusEnum": "annotate.models.QualityReport.Status",
        "MemberRoleEnum": "annotate.models.Membership.Role",
        "DecisionKindEnum": "annotate.models.MembershipEvent.Kind",
        "RoundStatusEnum": "training.models.TrainingRound.Status",
        "ModelKindEnum": "models_registry.models.ModelVersion.Kind",
        "ModelStatusEnum": "models_registry.models.ModelVersion.Status",
    },
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # No badge from validator.swagger.io: it would send the schema's address away, and the CSP refuses the image.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
