"""`branchpay keys create|revoke` and key authentication against the real store."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient, MongoClient

from api.domain.principal import Role
from api.store.keys import KeyRing
from tests.conftest import DEMO_BRANCHES_TOML

ROOT = Path(__file__).resolve().parents[2]
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def branchpay(tmp_path: Path, mongo_uri: str, db_name: str) -> Run:
    (tmp_path / "sandbox.key").write_text(secrets.token_urlsafe(32))
    config = tmp_path / "plugins.toml"
    config.write_text(DEMO_BRANCHES_TOML.format(gateway="http://127.0.0.1:9"))
    env = {
        **os.environ,
        "BRANCHPAY_MONGODB_URI": mongo_uri,
        "BRANCHPAY_DATABASE": db_name,
        "BRANCHPAY_PLUGINS_TOML": str(config),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api", *args], env=env, cwd=ROOT, capture_output=True, text=True
        )

    return run


def test_create_prints_the_key_once_and_stores_only_its_hash(
    branchpay: Run, mongo_uri: str, db_name: str
) -> None:
    created = branchpay(
        "keys", "create", "--role", "partner", "--branch", "zj", "--name", "shop-zj"
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("bp_") and len(key) > 40
    db = MongoClient(mongo_uri)[db_name]
    record = db.api_keys.find_one({"name": "shop-zj"})
    assert record is not None and record["role"] == "partner" and record["branches"] == ["zj"]
    assert key.split("_", 2)[2] not in str(record)
    audit = db.audit_log.find_one({"action": "KEY_CREATED"})
    assert audit is not None and audit["target"] == "shop-zj" and audit["actor"]
    assert key not in str(audit)

    again = branchpay("keys", "create", "--role", "ops", "--name", "shop-zj")
    assert again.returncode == 1 and "exists already" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "partner", "--name", "nobranch"], "needs at least one --branch"),
        (["--role", "partner", "--branch", "xx", "--name", "bad"], "no branch xx"),
        (["--role", "ops", "--name", "bad name!"], "key name"),
    ],
)
def test_create_refuses_bad_keys(branchpay: Run, args: list[str], message: str) -> None:
    result = branchpay("keys", "create", *args)
    assert result.returncode == 1
    assert message in result.stderr


async def test_revocation_takes_effect_at_once(
    branchpay: Run, mongo_uri: str, db_name: str
) -> None:
    created = branchpay(
        "keys", "create", "--role", "branch_admin", "--branch", "bj", "--name", "bj-admin"
    )
    key = created.stdout.strip().splitlines()[-1]
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_uri)
    ring = KeyRing(client[db_name]["api_keys"])
    principal = await ring.authenticate(key)
    assert principal is not None and principal.role is Role.BRANCH_ADMIN
    assert principal.branches == frozenset({"bj"})
    assert await ring.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert await ring.authenticate("bp_nothing") is None

    revoked = branchpay("keys", "revoke", "bj-admin")
    assert revoked.returncode == 0, revoked.stderr
    assert await ring.authenticate(key) is None
    assert branchpay("keys", "revoke", "bj-admin").returncode == 1
    await client.close()


def test_provider_changes_from_the_cli_only_edit_the_file_and_start_nothing(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> None:
    from api.dev.devdb import free_port, port_in_use

    (tmp_path / "sandbox.key").write_text(secrets.token_urlsafe(32))
    config = tmp_path / "plugins.toml"
    config.write_text(DEMO_BRANCHES_TOML.format(gateway="http://127.0.0.1:9"))
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "BRANCHPAY_MONGODB_URI"} | {
        "BRANCHPAY_PLUGINS_TOML": str(config),
        "BRANCHPAY_DB_PORT": str(port),
        "BRANCHPAY_DATA_DIR": str(tmp_path / "data"),
    }
    for action in ("disable", "enable"):
        done = subprocess.run(
            [sys.executable, "-m", "api", "providers", action, "zj", "sandbox"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert "embedded store" not in done.stderr
        assert not port_in_use(port)
    assert not (tmp_path / "data" / "db").exists()
    assert "enabled = true" in config.read_text()
    # The running service records what it applies (tests/config/test_live_reload.py).
    assert MongoClient(mongo_uri)[db_name].audit_log.count_documents({}) == 0
