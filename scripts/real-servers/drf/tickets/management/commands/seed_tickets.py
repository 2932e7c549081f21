"""`manage.py seed_tickets`: fills an empty database with the deterministic
tickets of seed/records.py (once, into the template every test copies)."""

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from tickets.models import Ticket

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "seed"))
import records  # noqa: E402  (seed/ is not a package on the path)


class Command(BaseCommand):
    help = "Seed the deterministic tickets into an empty database"

    def handle(self, *args, **options):
        if Ticket.objects.exists():
            raise CommandError("the database already holds tickets")
        Ticket.objects.bulk_create(
            Ticket(id=i, **records.ticket_fields(i))
            for i in range(1, records.DRF_TICKETS + 1)
        )
        self.stdout.write(f"seeded {Ticket.objects.count()} tickets")
