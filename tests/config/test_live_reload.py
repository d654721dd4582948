"""Branch admins edit plugins.toml while the service runs: applied live, or rejected safely."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import RunningService

PROVIDERS = '{ branch(code: "zj") { providers { name } } }'
STATUS = "{ configStatus { ok generation error path } }"


def eventually(check: Callable[[], bool], within: float = 2.0) -> float:
    """Seconds until ``check`` held; fails after ``within`` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not true within {within} s")


def zj_providers(service: RunningService) -> list[str]:
    return [p["name"] for p in service.client.data(PROVIDERS)["branch"]["providers"]]


def test_an_edit_takes_effect_within_two_seconds_without_failed_requests(
    start_service: Any,
) -> None:
    service: RunningService = start_service()
    assert zj_providers(service) == ["sandbox"]
    failures: list[Any] = []
    stop = threading.Event()

    def keep_asking() -> None:
        with httpx.Client(base_url=service.url, headers=service.client.http.headers) as http:
            while not stop.is_set():
                response = http.post("/graphql", json={"query": PROVIDERS})
                if response.status_code != 200 or response.json().get("errors"):
                    failures.append(response.text)

    reader = threading.Thread(target=keep_asking)
    reader.start()
    try:
        text = service.plugins_toml.read_text()
        service.plugins_toml.write_text(text.replace("enabled = true", "enabled = false", 1))
        eventually(lambda: zj_providers(service) == [])
        service.plugins_toml.write_text(text)
        eventually(lambda: zj_providers(service) == ["sandbox"])
    finally:
        stop.set()
        reader.join()
    assert failures == []
    status = service.client.data(STATUS)["configStatus"]
    assert status["ok"] is True and status["error"] is None and status["generation"] >= 3


def test_an_invalid_edit_is_rejected_and_the_last_good_config_keeps_serving(
    start_service: Any,
) -> None:
    service: RunningService = start_service()
    good = service.plugins_toml.read_text()
    service.plugins_toml.write_text(
        good.replace("[branches.zj.providers.sandbox]", "[branches.zj.providers.nosuch]")
    )
    eventually(lambda: service.client.data(STATUS)["configStatus"]["ok"] is False)
    status = service.client.data(STATUS)["configStatus"]
    assert "nosuch" in status["error"] and "branches.zj.providers.nosuch" in status["error"]
    assert zj_providers(service) == ["sandbox"]
    ready = httpx.get(f"{service.url}/readyz").json()
    assert (
        ready["checks"]["config"]["ok"] is False and "nosuch" in ready["checks"]["config"]["error"]
    )

    service.plugins_toml.write_text(good)
    eventually(lambda: service.client.data(STATUS)["configStatus"]["ok"] is True)
    assert service.client.data(STATUS)["configStatus"]["error"] is None


def test_every_change_a_reload_applies_is_in_the_audit_log_without_values(
    start_service: Any,
) -> None:
    service: RunningService = start_service()
    text = service.plugins_toml.read_text()
    edited = text.replace("enabled = true", "enabled = false", 1).replace(
        'gateway = "http://127.0.0.1:9"', 'gateway = "http://127.0.0.1:10"', 1
    )
    service.plugins_toml.write_text(edited)
    eventually(lambda: zj_providers(service) == [])

    def entries() -> list[dict[str, Any]]:
        return list(service.db.audit_log.find({}, sort=[("_id", 1)]))

    eventually(lambda: len(entries()) >= 2)
    recorded = [(e["action"], e["target"], e["branch"], e["detail"]) for e in entries()]
    assert recorded == [
        (
            "PROVIDER_DISABLED",
            "sandbox",
            "zj",
            {"file": str(service.plugins_toml), "change": "PROVIDER_DISABLED"},
        ),
        (
            "CONFIG_CHANGED",
            "sandbox",
            "zj",
            {
                "file": str(service.plugins_toml),
                "change": "SETTINGS_CHANGED",
                "fields": ["gateway"],
            },
        ),
    ]
    assert all(e["actor"].startswith("config-reload@") for e in entries())
    # Names of settings, never their values.
    assert "127.0.0.1:10" not in str(entries())
    # A refused edit applies nothing, so it records nothing.
    service.plugins_toml.write_text(edited + "\n[branches.zj.providers.nosuch]\nenabled = true\n")
    eventually(lambda: service.client.data(STATUS)["configStatus"]["ok"] is False)
    assert len(entries()) == 2
