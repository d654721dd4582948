"""Shared fixtures: a real MongoDB-compatible server for the whole run.

The suite starts a throwaway SecantusDB server on a free loopback port, or
uses ``BRANCHPAY_TEST_MONGODB_URI`` when it is set (any MongoDB 7+ replica set).
Each test that needs storage gets a database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from api import devdb


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("BRANCHPAY_TEST_MONGODB_URI")
    if configured:
        yield configured
        return
    with devdb.running(tmp_path_factory.mktemp("secantus") / "db") as store:
        yield store.uri


@pytest.fixture
def db_name() -> str:
    return f"bp_test_{uuid.uuid4().hex[:12]}"
