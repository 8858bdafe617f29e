"""Shared fixtures: a real Ralph LRS for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from realparts.ralph import RalphServer, run_ralph


@pytest.fixture(scope="session")
def ralph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RalphServer]:
    """A Ralph LRS (fs backend) with one `all`-scoped credential for the gateway."""
    with run_ralph(tmp_path_factory.mktemp("ralph")) as server:
        yield server
