"""Traces are optional: off, the app imports no OpenTelemetry; on without the extra, it says so.

Each app runs in a process of its own (this test process has imported
OpenTelemetry for its collector), served for real on loopback, and answers a
GraphQL request and a notification before it reports what it imported.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from api.dev.devdb import free_port, port_in_use
from tests.cli.test_serve import environment
from tests.conftest import DEMO_BRANCHES_TOML, issue_key
from tests.telemetry.collector import (
    Collector,
    collector,  # noqa: F401 (a fixture)
)

ROOT = Path(__file__).resolve().parents[2]

SERVED = """
import json, os, sys
import httpx
from api.settings import Settings
from api.web.app import create_app
from providers.kit.loopback import LoopbackServer

app = create_app(Settings())
graphql = next(r.endpoint for r in app.routes if getattr(r, "path", "") == "/graphql")
with LoopbackServer(app) as server:
    answered = httpx.post(
        server.url + "/graphql",
        json={"query": "{ branches { code } }"},
        headers={"authorization": "Bearer " + os.environ["TEST_KEY"]},
    ).json()
    notified = httpx.post(server.url + "/notify/sandbox/zj", content=b"forged").status_code
print(json.dumps({
    "answered": answered,
    "notified": notified,
    "extensions": [type(e).__name__ for e in graphql.schema.get_extensions()],
    "modules": sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"),
}))
"""


def _served(tmp_path: Path, mongo_uri: str, db_name: str, **env: str) -> dict[str, Any]:
    (tmp_path / "sandbox.key").write_text(secrets.token_urlsafe(32))
    config = tmp_path / "plugins.toml"
    config.write_text(DEMO_BRANCHES_TOML.format(gateway="http://127.0.0.1:9"))
    with MongoClient(mongo_uri) as client:
        key = issue_key(client[db_name], "ops")
        environ = {
            **{k: v for k, v in os.environ.items() if k != "BRANCHPAY_OTEL_ENDPOINT"},
            "PYTHONPATH": str(ROOT),
            "BRANCHPAY_MONGODB_URI": mongo_uri,
            "BRANCHPAY_DATABASE": db_name,
            "BRANCHPAY_PLUGINS_TOML": str(config),
            "BRANCHPAY_DATA_DIR": str(tmp_path / "data"),
            "BRANCHPAY_PII_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "TEST_KEY": key,
            **env,
        }
        try:
            done = subprocess.run(
                [sys.executable, "-c", SERVED],
                env=environ,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            client.drop_database(db_name)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["answered"]["data"] == {
        "branches": [{"code": "zj"}, {"code": "bj"}, {"code": "yn"}]
    }, report
    assert report["notified"] != 200  # a forged notification is refused
    return report


def test_without_an_endpoint_the_app_imports_no_opentelemetry(
    tmp_path: Path, mongo_uri: str, db_name: str
) -> None:
    report = _served(tmp_path, mongo_uri, db_name)
    assert report["modules"] == []
    assert "OperationSpans" not in report["extensions"]
    assert report["extensions"][0] == "ErrorShaping"


def test_with_an_endpoint_the_schema_has_the_operation_spans(
    tmp_path: Path,
    mongo_uri: str,
    db_name: str,
    collector: Collector,  # noqa: F811 (the fixture)
) -> None:
    """The other side of the test above: the same run does import and trace."""
    report = _served(tmp_path, mongo_uri, db_name, BRANCHPAY_OTEL_ENDPOINT=collector.url)
    assert "opentelemetry.sdk.trace" in report["modules"]
    assert report["extensions"][0] == "OperationSpans"
    spans = collector.wait_for(lambda got: any(s.name == "notification" for s in got))
    assert {"query", "POST /graphql"} <= {s.name for s in spans}
    (notification,) = [s for s in spans if s.name == "notification"]
    assert notification.attributes["branchpay.notification_result"] == "rejected_signature"


# Python refuses an import whose sys.modules entry is None, as if the package were absent.
WITHOUT_OPENTELEMETRY = (
    "import sys; sys.modules['opentelemetry'] = None; from api.cli import main; main()"
)


def test_an_endpoint_without_the_extra_stops_serve_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "plugins.toml").write_text((ROOT / "plugins.toml").read_text())
    api_port, db_port = free_port(), free_port()
    env = environment(tmp_path, db_port) | {
        "BRANCHPAY_OTEL_ENDPOINT": "http://127.0.0.1:4318",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENTELEMETRY, "serve", "--demo", "--port", str(api_port)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "BRANCHPAY_OTEL_ENDPOINT is set" in output
    assert "extra `otel`" in output and "pip install 'branchpay[otel]'" in output
    assert "Traceback" not in output
    assert not port_in_use(db_port), "the store was started anyway"


def test_an_endpoint_that_is_no_http_url_stops_serve(tmp_path: Path) -> None:
    endpoint = "127.0.0.1:4318"  # no scheme
    (tmp_path / "plugins.toml").write_text((ROOT / "plugins.toml").read_text())
    env = environment(tmp_path, free_port()) | {"BRANCHPAY_OTEL_ENDPOINT": endpoint}
    done = subprocess.run(
        [sys.executable, "-m", "api", "serve", "--demo", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "must be an http(s) URL" in output and repr(endpoint) in output
