"""Settings of the Django REST Framework server that apisync's real-server tests
sync from. One SQLite file per test, named by TICKETS_DB (a copy of the seeded
template), and nothing a JSON API does not need: no sessions, no admin, no CSRF,
no templates.
"""

import os

# A test server on loopback: nothing to keep secret.
SECRET_KEY = "apisync-real-servers-not-a-secret"
# DEBUG off so the 404 past the last page is DRF's plain JSON, as in production.
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "oauth2_provider",
    "tickets",
]
# No CommonMiddleware: its APPEND_SLASH redirect would hide a wrong URL in a
# test behind a 301.
MIDDLEWARE = []
ROOT_URLCONF = "archive.urls"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TICKETS_DB", "tickets.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    # Anonymous and writable: tests PATCH, POST and DELETE between runs.
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
}

# django-oauth-toolkit: the token endpoint at /o/token/ and the OAuth2-only
# copy of the tickets at /secure/tickets/. OAUTH_TOKEN_SECONDS sets the access
# token lifetime (short ones make a run outlive its token); refresh tokens
# rotate on every use and a used one is refused at once, as many providers do.
OAUTH2_PROVIDER = {
    "ACCESS_TOKEN_EXPIRE_SECONDS": int(os.environ.get("OAUTH_TOKEN_SECONDS", "36000")),
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    "SCOPES": {"read": "Read tickets"},
    "DEFAULT_SCOPES": ["read"],
}

# Request lines go to the server's log file (the test keeps it for failures).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
