"""The records every real server is seeded with: a pure function of the row
number, so each build of a template holds the same bytes and the tests can
reason about counts (no randomness, no clock).

Run as a script it writes json-server's database:
    python seed/records.py json-server OUT.json
"""

import json
import sys
from datetime import datetime, timedelta, timezone

# DRF's template holds this many tickets: 50 full pages of 100 and a short
# last page of 2, so every paginator meets a partial page and a page past it.
DRF_TICKETS = 5_002
# json-server's db.json: 6 full pages of 50 and a short one of 20.
JSON_SERVER_TICKETS = 320
# The FastAPI service: 12 full pages of 100 and a short one of 34.
FASTAPI_ORDERS = 1_234

BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)
STATUSES = ["new", "open", "pending", "on_hold", "solved", "closed"]
PRIORITIES = ["low", "normal", "high", "urgent"]
WORDS = ["login", "invoice", "refund", "export", "café menu", "shipping",
         "password", "API key", "webhook", "über-report", "timeout"]


def ticket_fields(i):
    """The fields of ticket `i` (1-based) other than its id, as DRF stores them."""
    created = BASE + timedelta(minutes=37 * i)
    updated = created + timedelta(minutes=(i * 7919) % 10_000)
    return {
        "subject": f"Ticket {i}: {WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]}",
        "status": STATUSES[i % len(STATUSES)],
        "priority": PRIORITIES[(i * 3) % len(PRIORITIES)],
        "requester": f"customer{i % 977}@example.com",
        # Every fifth ticket is unassigned: a null the archive must keep.
        "assignee": None if i % 5 == 0 else f"agent{i % 13}",
        "tags": [f"t{i % 4}", f"group-{i % 9}"][: 1 + i % 2],
        "created_at": created,
        "updated_at": updated,
    }


def json_server_record(i):
    """Record `i` of json-server's collection, in its camelCase habit."""
    fields = ticket_fields(i)
    return {
        "id": i,
        "title": fields["subject"],
        "status": fields["status"],
        "customer": {"name": f"Customer {i % 977}", "email": fields["requester"]},
        "amountCents": (i * 1234) % 100_000,
        "createdAt": fields["created_at"].isoformat().replace("+00:00", "Z"),
        "updatedAt": fields["updated_at"].isoformat().replace("+00:00", "Z"),
    }


def fastapi_orders():
    """The FastAPI service's orders, in id order."""
    orders = []
    for i in range(1, FASTAPI_ORDERS + 1):
        fields = ticket_fields(i)
        orders.append({
            "id": i,
            "reference": f"ORD-{i:06d}",
            "status": fields["status"],
            "customer": fields["requester"],
            "total_cents": (i * 4321) % 250_000,
            "lines": [{"sku": f"SKU-{(i * k) % 97}", "qty": k} for k in range(1, 1 + i % 3)],
            "updated_at": fields["updated_at"].isoformat(),
        })
    return orders


def now_text():
    """The current time as the services write it after a change."""
    return datetime.now(timezone.utc).isoformat()


def main(argv):
    if len(argv) != 3 or argv[1] != "json-server":
        sys.exit("usage: records.py json-server OUT.json")
    db = {"tickets": [json_server_record(i) for i in range(1, JSON_SERVER_TICKETS + 1)]}
    with open(argv[2], "w", encoding="utf-8") as out:
        json.dump(db, out, indent=2, ensure_ascii=False)
        out.write("\n")


if __name__ == "__main__":
    main(sys.argv)
