"""`manage.py seed_oauth`: the OAuth2 clients and the user of the auth tests
(once, into the template every test copies). The secrets are test values on
loopback; the tests hold the same constants (tests/it/real_servers/oauth.rs)."""

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand
from oauth2_provider.models import Application

USERNAME = "archivist"
PASSWORD = "archivist-password-4711"
CLIENTS = [
    # (client id, secret, grant): a service account, and a client acting for
    # the user (the password grant hands out the first refresh token).
    ("apisync-service", "service-secret-0815", Application.GRANT_CLIENT_CREDENTIALS),
    ("apisync-user", "user-secret-4242", Application.GRANT_PASSWORD),
]


class Command(BaseCommand):
    help = "Create the OAuth2 clients and user of apisync's auth tests"

    def handle(self, *args, **options):
        user = User.objects.create_user(USERNAME, password=PASSWORD)
        for client_id, secret, grant in CLIENTS:
            Application.objects.create(
                name=client_id,
                client_id=client_id,
                client_secret=secret,
                client_type=Application.CLIENT_CONFIDENTIAL,
                authorization_grant_type=grant,
                user=user,
            )
        self.stdout.write(f"created {len(CLIENTS)} OAuth2 clients")
