"""What strict statement validation costs per statement, against baselines of the same run.

    .venv/bin/python bench/validation_bench.py          # best of 7, microseconds per statement

Baselines: parsing the same bytes with jsoncodec.loads (orjson), and the basic check the
gateway ran before (statements._check_statement). The ratios are what to compare between
runs on different machines; the microseconds depend on the machine and its load.
"""

from __future__ import annotations

import sys
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # for gateway

from gateway import jsoncodec
from gateway.xapi.statements import _check_statement
from gateway.xapi.validation import validate_statement

BATCH = 100


def realistic_statement(index: int = 0) -> dict[str, Any]:
    """A statement as an e-learning module sends it: about 1 KB of JSON."""
    return {
        "id": str(uuid.UUID(int=index + 1)),
        "actor": {
            "objectType": "Agent",
            "name": "Ann Learner",
            "account": {"homePage": "https://lms.example.org", "name": f"u{index}"},
        },
        "verb": {"id": "http://adlnet.gov/expapi/verbs/answered", "display": {"en-US": "answered"}},
        "object": {
            "objectType": "Activity",
            "id": "https://lms.example.org/course/7/quiz/3/question/2",
            "definition": {
                "name": {"en-US": "Question 2"},
                "description": {"en-US": "Which of these are prime numbers?"},
                "type": "http://adlnet.gov/expapi/activities/cmi.interaction",
                "interactionType": "choice",
                "correctResponsesPattern": ["two[,]three"],
                "choices": [
                    {"id": "two", "description": {"en-US": "2"}},
                    {"id": "three", "description": {"en-US": "3"}},
                    {"id": "four", "description": {"en-US": "4"}},
                ],
            },
        },
        "result": {
            "score": {"scaled": 0.5, "raw": 1, "min": 0, "max": 2},
            "success": False,
            "completion": True,
            "response": "two",
            "duration": "PT12.5S",
        },
        "context": {
            "registration": "ec531277-b57b-4c15-8d91-d292c5b2b8f7",
            "contextActivities": {
                "parent": [{"id": "https://lms.example.org/course/7/quiz/3"}],
                "grouping": [{"id": "https://lms.example.org/course/7"}],
                "category": [{"id": "https://w3id.org/xapi/cmi5/context/categories/moveon"}],
            },
            "platform": "Example LMS",
            "language": "en-US",
            "extensions": {"https://lms.example.org/xapi/ext/attempt": 2},
        },
        "timestamp": "2026-11-27T10:15:30.123Z",
    }


def per_statement(call: Callable[[], Any], statements: int, number: int) -> float:
    """Best of 7 runs, in microseconds per statement."""
    return min(timeit.repeat(call, number=number, repeat=7)) / number / statements * 1e6


def main() -> None:
    """Print microseconds per statement and the ratios to the baselines."""
    one = realistic_statement()
    one_bytes = jsoncodec.dumps(one)
    batch = [realistic_statement(index) for index in range(BATCH)]
    batch_bytes = jsoncodec.dumps(batch)
    print(
        f"one statement: {len(one_bytes)} bytes; batch: {BATCH} statements, "
        f"{len(batch_bytes)} bytes"
    )

    def batch_validate(version: str) -> None:
        for index, statement in enumerate(batch):
            validate_statement(statement, version, f"statements[{index}]")

    def batch_basic() -> None:
        for index, statement in enumerate(batch):
            _check_statement(statement, f"statements[{index}]", "1.0.3", False)

    rows = [
        (
            "jsoncodec.loads (baseline)",
            per_statement(lambda: jsoncodec.loads(one_bytes), 1, 5000),
            per_statement(lambda: jsoncodec.loads(batch_bytes), BATCH, 50),
        ),
        (
            "_check_statement (basic, before)",
            per_statement(lambda: _check_statement(one, "statement", "1.0.3", False), 1, 5000),
            per_statement(batch_basic, BATCH, 50),
        ),
        (
            "validate_statement 1.0.3",
            per_statement(lambda: validate_statement(one, "1.0.3", "statement"), 1, 2000),
            per_statement(lambda: batch_validate("1.0.3"), BATCH, 20),
        ),
        (
            "validate_statement 2.0.0",
            per_statement(lambda: validate_statement(one, "2.0.0", "statement"), 1, 2000),
            per_statement(lambda: batch_validate("2.0.0"), BATCH, 20),
        ),
    ]
    loads_one, loads_batch = rows[0][1], rows[0][2]
    print(f"{'':<34} {'one: us':>9} {'x loads':>8}   {'batch: us/st':>12} {'x loads':>8}")
    for label, single, each in rows:
        print(
            f"{label:<34} {single:9.2f} {single / loads_one:8.2f}   "
            f"{each:12.2f} {each / loads_batch:8.2f}"
        )


if __name__ == "__main__":
    main()
