"""``setProviderEnabled`` and ``providerSettings`` over HTTP against a running service.

The edit is the CLI's (api/config/edit.py): the file keeps its comments, an
edit that would leave it invalid writes nothing, each change is audited, and
the watcher applies it as after `branchpay providers disable`.
"""

from __future__ import annotations

from typing import Any

from tests.config.test_live_reload import eventually
from tests.conftest import DEMO_BRANCHES_TOML, RunningService

SET = """
mutation ($branch: String!, $provider: String!, $enabled: Boolean!) {
  setProviderEnabled(input: {branch: $branch, provider: $provider, enabled: $enabled}) {
    setting { branch provider enabled }
    changed command warning
    userErrors { field code message }
  }
}
"""
SETTINGS = '{ providerSettings(branch: "zj") { provider enabled } }'
ZJ_PROVIDERS = '{ branch(code: "zj") { providers { name } } }'
AUDIT = "{ auditLog(first: 20) { entries { actor action target branch detail } } }"

# A comment of ours in the file, to see that an edit keeps it.
COMMENTED = "# Kept by every edit: the console's too.\n" + DEMO_BRANCHES_TOML


def switch(client: Any, branch: str, provider: str, enabled: bool) -> dict[str, Any]:
    variables = {"branch": branch, "provider": provider, "enabled": enabled}
    result: dict[str, Any] = client.data(SET, variables)["setProviderEnabled"]
    return result


def codes(payload: dict[str, Any]) -> list[str]:
    return [error["code"] for error in payload["userErrors"]]


def test_a_branch_admin_disables_a_provider_the_file_keeps_its_comments_and_the_reload_applies_it(
    start_service: Any,
) -> None:
    service: RunningService = start_service(COMMENTED, config_editing=True)
    admin = service.client_for("branch_admin", "zj")
    before = service.plugins_toml.read_text()

    payload = switch(admin, "zj", "sandbox", False)

    assert payload["userErrors"] == []
    assert payload["setting"] == {"branch": "zj", "provider": "sandbox", "enabled": False}
    assert payload["changed"] is True
    assert payload["command"] == "branchpay providers disable zj sandbox"
    assert "no enabled provider" in payload["warning"]
    after = service.plugins_toml.read_text()
    assert after.startswith("# Kept by every edit: the console's too.\n")
    # Only the one line changed.
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert changed == [("enabled = true", "enabled = false")]
    eventually(lambda: admin.data(ZJ_PROVIDERS)["branch"]["providers"] == [])
    assert admin.data(SETTINGS)["providerSettings"] == [{"provider": "sandbox", "enabled": False}]
    # Beijing's sandbox is untouched.
    bj = service.client.data('{ branch(code: "bj") { providers { name } } }')["branch"]
    assert bj["providers"] == [{"name": "sandbox"}]

    entries = service.client.data(AUDIT)["auditLog"]["entries"]
    mine = [e for e in entries if e["detail"].get("via") == "setProviderEnabled"]
    assert len(mine) == 1
    assert mine[0]["action"] == "PROVIDER_DISABLED"
    assert mine[0]["target"] == "sandbox" and mine[0]["branch"] == "zj"
    assert mine[0]["actor"].startswith("test-")

    # Again: nothing to do, the file is left as it is and nothing more is audited.
    again = switch(admin, "zj", "sandbox", False)
    assert again["changed"] is False and again["userErrors"] == []
    assert service.plugins_toml.read_text() == after

    assert switch(admin, "zj", "sandbox", True)["changed"] is True
    eventually(lambda: admin.data(ZJ_PROVIDERS)["branch"]["providers"] == [{"name": "sandbox"}])


def test_refused_without_config_editing_with_the_command_to_run(start_service: Any) -> None:
    service: RunningService = start_service()
    before = service.plugins_toml.read_text()

    payload = switch(service.client_for("branch_admin", "zj"), "zj", "sandbox", False)

    assert payload["setting"] is None
    assert codes(payload) == ["CONFIG_EDITING_OFF"]
    assert "`branchpay providers disable zj sandbox`" in payload["userErrors"][0]["message"]
    assert payload["command"] == "branchpay providers disable zj sandbox"
    assert service.plugins_toml.read_text() == before


def test_wrong_branch_unknown_provider_and_partners_are_refused_and_nothing_changes(
    start_service: Any,
) -> None:
    service: RunningService = start_service(config_editing=True)
    before = service.plugins_toml.read_text()
    admin = service.client_for("branch_admin", "zj")

    # Beijing is not this key's: refused like a branch that does not exist.
    assert codes(switch(admin, "bj", "sandbox", False)) == ["UNKNOWN_BRANCH"]
    assert codes(switch(admin, "zz", "sandbox", False)) == ["UNKNOWN_BRANCH"]
    unknown = switch(admin, "zj", "nosuch", True)
    assert codes(unknown) == ["UNKNOWN_PROVIDER"]
    assert unknown["userErrors"][0]["field"] == ["provider"]
    # Installed, but Zhejiang has no table for it.
    assert codes(switch(admin, "zj", "alipay", True)) == ["PROVIDER_NOT_CONFIGURED"]
    # Another branch's admin sees no Zhejiang settings.
    other = service.client_for("branch_admin", "bj")
    assert other.data(SETTINGS)["providerSettings"] == []

    partner = service.client_for("partner", "zj")
    variables = {"branch": "zj", "provider": "sandbox", "enabled": False}
    assert partner.error_codes(SET, variables) == ["FORBIDDEN"]
    assert partner.error_codes(SETTINGS) == ["FORBIDDEN"]
    assert service.plugins_toml.read_text() == before


def test_an_edit_that_would_leave_the_file_invalid_writes_nothing(start_service: Any) -> None:
    service: RunningService = start_service(config_editing=True)
    before = service.plugins_toml.read_text()
    # The sandbox's secret file is gone: the file after the edit cannot be loaded.
    (service.plugins_toml.parent / "sandbox.key").unlink()

    payload = switch(service.client_for("branch_admin", "zj"), "zj", "sandbox", False)

    assert codes(payload) == ["CONFIG_INVALID"]
    message = payload["userErrors"][0]["message"]
    assert "would be invalid after this change; nothing written" in message
    assert "sandbox.key" in message
    assert service.plugins_toml.read_text() == before
    entries = service.client.data(AUDIT)["auditLog"]["entries"]
    assert not [e for e in entries if e["detail"].get("via") == "setProviderEnabled"]
