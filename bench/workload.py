"""What the bench sends, and as whom: the ~1 KB statement, the batch, credentials, targets."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
USERNAME = "bench"
PASSWORD = "bench-password-1"
ADMIN_USERNAME = "bench-admin"
ADMIN_PASSWORD = "bench-admin-password-1"
AGENT = {"objectType": "Agent", "name": "Bench client", "mbox": "mailto:bench@example.com"}
XAPI_VERSION = "1.0.3"
BATCH_SIZE = 100
PLACEHOLDER = "@ID@"  # bench/loadgen.py --unique-ids puts a fresh UUID there
TARGETS = ("target-1", "target-2", "target-3")
FLOOD_USERS = 50  # existing usernames the flood guesses passwords for (per variant)
FLOOD_VARIANTS = {
    # key: (label, lockout on, flood from the valid client's own address)
    "flood": ("bcrypt flood, lockout off", False, False),
    "flood_lockout": ("bcrypt flood, lockout on, flood from 127.0.0.2", True, False),
    "flood_lockout_same_addr": ("bcrypt flood, lockout on, flood from 127.0.0.1", True, True),
}
# One client from one address is the whole load here: the rate limits stay on (their check
# is part of the hot path measured) but set so high that they never trip.
NO_RATE_LIMITS = {
    "per_ip_rate": 1e9,
    "per_ip_burst": 10**9,
    "per_principal_rate": 1e9,
    "per_principal_burst": 10**9,
}


def statement(index: int = 0) -> dict[str, Any]:
    """A realistic ~1 KB xAPI statement, with the id and timestamp a good client sets."""
    return {
        "id": str(uuid.UUID(int=0x5EED0000_0000_4000_8000_000000000000 + index)),
        "timestamp": "2024-05-02T10:15:30.123Z",
        "actor": {
            "objectType": "Agent",
            "name": "Ada Lovelace",
            "mbox": "mailto:ada.lovelace@example.com",
        },
        "verb": {
            "id": "http://adlnet.gov/expapi/verbs/completed",
            "display": {"en-US": "completed", "fr-FR": "a terminé"},
        },
        "object": {
            "objectType": "Activity",
            "id": "https://courses.example.com/xapi/activities/analytical-engine/module-3",
            "definition": {
                "type": "http://adlnet.gov/expapi/activities/module",
                "name": {"en-US": "The Analytical Engine, module 3: loops and cards"},
            },
        },
        "result": {
            "score": {"scaled": 0.92, "raw": 92, "min": 0, "max": 100},
            "success": True,
            "completion": True,
            "duration": "PT42M17S",
            "response": "loop-cards-ok",
        },
        "context": {
            "registration": "0f5a9a9e-1b7e-4a52-9d7e-6c3a1f2b8d41",
            "platform": "Example LMS 4.2",
            "language": "en-US",
            "contextActivities": {
                "parent": [
                    {
                        "objectType": "Activity",
                        "id": "https://courses.example.com/xapi/activities/analytical-engine",
                    }
                ],
                "category": [
                    {
                        "objectType": "Activity",
                        "id": "https://w3id.org/xapi/cmi5/context/categories/moveon",
                    }
                ],
            },
            "extensions": {"https://courses.example.com/xapi/ext/attempt": 3},
        },
    }


def statement_template(batch: int = 0) -> bytes:
    """The bench statement (a batch of `batch` when > 0) with the id left for the loadgen."""

    def one(index: int) -> dict[str, Any]:
        return {**statement(index), "id": PLACEHOLDER}

    data: Any = [one(i) for i in range(1, batch + 1)] if batch else one(0)
    return json.dumps(data, ensure_ascii=False).encode()


def basic(username: str, password: str) -> str:
    """An `Authorization: Basic` value."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def request_headers(authorization: str | None = None) -> dict[str, str]:
    """The headers of a bench POST (the bench user's Basic credential unless given one)."""
    return {
        "Content-Type": "application/json",
        "X-Experience-API-Version": XAPI_VERSION,
        "Authorization": authorization or basic(USERNAME, PASSWORD),
    }


@dataclass(frozen=True)
class Bodies:
    """The request bodies of a run, as files: fixed ids, and templates with fresh ids."""

    single: dict[str, Any]
    batch: list[dict[str, Any]]
    one_file: Path
    batch_file: Path
    one_template: Path
    batch_template: Path


def write_bodies(tmp: Path) -> Bodies:
    """Write the single statement, the 100-statement batch and their templates under `tmp`."""
    single = statement()
    batch = [statement(i) for i in range(1, BATCH_SIZE + 1)]
    one_file, batch_file = tmp / "one.json", tmp / "batch100.json"
    one_file.write_bytes(json.dumps(single, ensure_ascii=False).encode())
    batch_file.write_bytes(json.dumps(batch, ensure_ascii=False).encode())
    one_template, batch_template = tmp / "one-template.json", tmp / "batch-template.json"
    one_template.write_bytes(statement_template())
    batch_template.write_bytes(statement_template(BATCH_SIZE))
    return Bodies(single, batch, one_file, batch_file, one_template, batch_template)
