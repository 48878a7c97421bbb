"""Berth's settings, read from the environment in one place (django-environ).

Local defaults are safe for one machine: SQLite under var/, Redis on localhost, a secret key
generated once and kept in var/. With BERTH_MODE=production the panel refuses to start unless
a real SECRET_KEY and ALLOWED_HOSTS are given.
"""

import secrets
import socket
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

BERTH_MODE = env.str("BERTH_MODE", default="development")
if BERTH_MODE not in ("development", "production"):
    raise ImproperlyConfigured("BERTH_MODE must be 'development' or 'production'")
PRODUCTION = BERTH_MODE == "production"

VAR_DIR = Path(env.str("BERTH_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)


def _secret_key() -> str:
    key = env.str("SECRET_KEY", default="")
    if PRODUCTION:
        if len(key) < 50 or key.startswith("django-insecure") or len(set(key)) < 5:
            raise ImproperlyConfigured(
                "BERTH_MODE=production needs SECRET_KEY: at least 50 random characters."
            )
        return key
    if key:
        return key
    # One key per checkout, generated on first start, so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when BERTH_MODE=production.")

ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=[] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"]
)
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("BERTH_MODE=production needs ALLOWED_HOSTS.")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "panel.accounts",
    "panel.catalog",
    "panel.hosts",
    "panel.instances",
    "panel.audit",
    "panel.realtime",
    "panel.web",
    "panel.api",
    "panel.webhooks",
    "panel.usage",
    "panel.backups",
    "panel.staff",
    "panel.core",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "panel.core.middleware.SecurityHeadersMiddleware",
    # Above the session middleware: it turns a database outage anywhere below into a 503.
    "panel.core.outage.DatabaseOutageMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "panel.core.middleware.LoginThrottleMiddleware",
    # Where the user's event feed stands, read before the view reads the database.
    "panel.realtime.context_processors.EventsSeqMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "panel.urls"
ASGI_APPLICATION = "panel.asgi.application"
WSGI_APPLICATION = "panel.wsgi.application"

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
                "panel.realtime.context_processors.events_seq",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'berth.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE makes every transaction take the write lock up front, so two ordering
    # transactions serialize instead of both passing the capacity check (no row locks in SQLite).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    # BERTH_DB_POOL=N: a psycopg pool of at most N connections per process. Under ASGI each
    # request runs in a thread of its own, so persistent connections pile up (one per thread)
    # until PostgreSQL refuses more; a pool bounds them (bench/api.py measures with one).
    if env.int("BERTH_DB_POOL", default=0):
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1, "max_size": env.int("BERTH_DB_POOL"), "timeout": 10,
        }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "instance-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve straight from static/ without collectstatic

EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="berth@localhost")
SERVER_EMAIL = env.str("SERVER_EMAIL", default=DEFAULT_FROM_EMAIL)
# SMTP, for EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend (password resets).
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
# Whether anyone may sign up as a customer; an admin can override it (accounts.SiteSettings).
BERTH_SIGNUP_OPEN = env.bool("BERTH_SIGNUP_OPEN", default=False)
# Whether customers may add their own installer ISOs (private to them), how many each, how big.
BERTH_CUSTOMER_ISO_UPLOADS = env.bool("BERTH_CUSTOMER_ISO_UPLOADS", default=False)
BERTH_CUSTOMER_ISO_MAX = env.int("BERTH_CUSTOMER_ISO_MAX", default=3)
BERTH_CUSTOMER_ISO_MAX_MIB = env.int("BERTH_CUSTOMER_ISO_MAX_MIB", default=8192)

# --- Redis: Celery broker, Channels layer, console streams ---------------------------------
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
# Seconds a Redis read may wait: longer than any blocking command the panel issues (the
# channel layer's 5 s receive, the console's 15 s XREAD BLOCK), shorter than "forever".
REDIS_READ_TIMEOUT = 30
# After a Redis restart every pooled connection is dead; without a retry the first command on
# each fails ("Connection closed by server") and takes a WebSocket or a request down with it.
# One retry on a fresh connection is enough: Redis is back, or the error is real.
REDIS_RETRY = {
    "retry_on_error": [RedisConnectionError],
    "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py 8 reads with a 5 s socket timeout by default, which kills channels_redis's
        # own 5 s blocking receive (BZPOPMIN) on every idle socket: give reads more room.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": REDIS_READ_TIMEOUT, **REDIS_RETRY}],
                   "capacity": 1000, "expiry": 30},
    }
}

# The Django cache (API rate limits) lives in Redis too, so every web process shares it.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "berth-cache",
        "OPTIONS": REDIS_RETRY,
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "panel"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# Reports from hosts are carried out only when the host they are about signed them.
CELERY_TASK_ANNOTATIONS = ["panel.hosts.reports:HostReportAnnotation"]
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    # Every 5 s with a 20 s timeout: a silent host shows offline within 25 s.
    "expire-heartbeats": {"task": "berth.panel.expire_heartbeats", "schedule": 5.0},
    "reconcile-hosts": {"task": "berth.panel.reconcile_hosts", "schedule": 30.0},
    "sync-host-credentials": {"task": "berth.panel.sync_host_credentials", "schedule": 60.0},
    # Cheap (unfinished operations only) and what ends an operation whose worker died.
    "reap-stale-operations": {"task": "berth.panel.reap_stale_operations", "schedule": 15.0},
    "send-due-webhooks": {"task": "berth.panel.send_due_webhooks", "schedule": 30.0},
    # Scheduled backups (panel/backups/tasks.py): starts those due, prunes beyond keep N.
    "run-backup-schedules": {"task": "berth.panel.run_backup_schedules", "schedule": 60.0},
}

# --- Berth -------------------------------------------------------------------------------
BERTH_HOST_NAME = env.str("BERTH_HOST_NAME", default=socket.gethostname().split(".")[0].lower())
BERTH_IMAGE_DIR = Path(env.str("BERTH_IMAGE_DIR", default=str(VAR_DIR / "images")))
BERTH_HOSTS_DIR = Path(env.str("BERTH_HOSTS_DIR", default=str(VAR_DIR / "hosts")))
# Where backups (and the archives of moves between hosts) are written: a directory every host
# mounts at the same path (local for one host; NFS or similar for several).
BERTH_BACKUP_TARGET = Path(env.str("BERTH_BACKUP_TARGET", default=str(VAR_DIR / "backups")))
# Agents beat every 5 s: 20 s is four missed heartbeats.
BERTH_HEARTBEAT_TIMEOUT = timedelta(seconds=env.int("BERTH_HEARTBEAT_TIMEOUT", default=20))
# Hosts (panel/hosts/credentials.py): each reaches Redis as its own ACL user. The URL is the
# panel's Redis as the hosts reach it (another address than the panel's own, often).
BERTH_HOST_REDIS_URL = env.str("BERTH_HOST_REDIS_URL", default=REDIS_URL)
BERTH_REDIS_USER_PREFIX = env.str("BERTH_REDIS_USER_PREFIX", default="berth-host-")
# /metrics (panel/staff/views/metrics.py): staff sessions, or this bearer token for Prometheus.
BERTH_METRICS_TOKEN = env.str("BERTH_METRICS_TOKEN", default="")
# How long an operation may wait in a host's queue before it is cancelled (a running one is
# judged by its worker's lease instead: panel/instances/services/reaping.py).
BERTH_OPERATION_TIMEOUT = timedelta(seconds=env.int("BERTH_OPERATION_TIMEOUT", default=900))
# Sign-in throttle (panel/core/login_throttle.py): failures per address and username, and per
# address, within the lockout window. Behind a reverse proxy, list its addresses so the
# client's own address is taken from X-Forwarded-For.
BERTH_LOGIN_ATTEMPTS = env.int("BERTH_LOGIN_ATTEMPTS", default=5)
BERTH_LOGIN_ATTEMPTS_PER_ADDRESS = env.int("BERTH_LOGIN_ATTEMPTS_PER_ADDRESS", default=30)
BERTH_LOGIN_LOCKOUT_SECONDS = env.int("BERTH_LOGIN_LOCKOUT_SECONDS", default=900)
BERTH_TRUSTED_PROXIES = env.list("BERTH_TRUSTED_PROXIES", default=[])
BERTH_CONSOLE_SCROLLBACK_BYTES = env.int("BERTH_CONSOLE_SCROLLBACK_BYTES", default=128 * 1024)

# --- Billing API (panel/api) ----------------------------------------------------------------
BERTH_API_RATE = env.str("BERTH_API_RATE", default="1200/min")  # per token
BERTH_WEBHOOK_TIMEOUT = env.float("BERTH_WEBHOOK_TIMEOUT", default=5.0)
BERTH_WEBHOOK_MAX_ATTEMPTS = env.int("BERTH_WEBHOOK_MAX_ATTEMPTS", default=8)
BERTH_WEBHOOK_RETRY_SECONDS = env.float("BERTH_WEBHOOK_RETRY_SECONDS", default=30.0)

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "panel.api.schema.BerthAutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["panel.api.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["panel.api.permissions.HasApiToken"],
    "DEFAULT_THROTTLE_CLASSES": ["panel.api.throttling.TokenRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    # The API's problem+json handler, with database outages as 503 (panel/core/outage.py).
    "EXCEPTION_HANDLER": "panel.core.outage.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Berth billing API",
    "DESCRIPTION": (
        "Provision, suspend and meter containers and VMs from a billing system "
        "(api-contract.md). Errors are RFC 9457 problem details (application/problem+json). "
        "Lists take `limit` (1-500, default 50) and `offset`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",  # served from this machine: the docs work offline
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "ServiceStateEnum": "panel.instances.models.InstanceState",
        "OperationStateEnum": "panel.instances.models.Operation.State",
        "KindEnum": "panel.catalog.models.InstanceKind",
        "BackupKindEnum": "panel.backups.models.Backup.Kind",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "panel.api.schema.add_links",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    SESSION_COOKIE_HTTPONLY = True
    # Pages send the CSRF token from their forms; no script needs to read the cookie.
    CSRF_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    CSRF_COOKIE_SAMESITE = "Lax"
