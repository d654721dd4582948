"""plugins.toml loading: the model it yields, secrets, and every error an admin can meet."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from api.config.model import ConfigError, default_path
from api.config.secrets import redact
from api.config.validate import load_config
from api.plugins.contract import PaymentMethod, Provider

Write = Callable[[str], Path]
Providers = dict[str, type[Provider]]
INLINE = "secret must be given as { env = ... } or { file = ... }, never inline"


def problems_of(path: Path, providers: Providers) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, providers)
    assert str(caught.value).splitlines() == caught.value.problems
    return caught.value.problems


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    lines = [number for number, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[occurrence - 1]


def test_valid_file_keeps_file_order_and_resolves_secrets(
    write_config: Write,
    providers: Providers,
    valid_text: str,
    pem_key: str,
    wallet_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_config(valid_text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative { file } paths follow plugins.toml, not the cwd

    config = load_config(path, providers)

    assert list(config.branches) == ["zj", "bj"]
    zj, bj = config.branches["zj"], config.branches["bj"]
    assert (zj.code, zj.name, zj.province, zj.operator) == (
        "zj",
        "China Mobile Zhejiang",
        "Zhejiang",
        "China Mobile",
    )
    assert list(zj.providers) == ["cardpay", "wallet"]
    assert list(bj.providers) == ["wallet", "cardpay"]
    assert zj.enabled_providers() == ["cardpay"]
    assert bj.enabled_providers() == ["wallet", "cardpay"]

    card = zj.providers["cardpay"].settings
    assert card.private_key.get_secret_value() == pem_key.rstrip("\n")  # type: ignore[attr-defined]
    assert card.limits.max_fen == 100_000  # type: ignore[attr-defined]
    assert pem_key.splitlines()[1] not in repr(card)
    disabled = zj.providers["wallet"]
    assert disabled.enabled is False
    assert disabled.settings.app_id == "wallet-zj"  # type: ignore[attr-defined]
    assert disabled.settings.signing_key == wallet_key  # type: ignore[attr-defined]


def test_reference_allowed_for_plain_setting_and_bytes_read_exactly(
    write_config: Write, providers: Providers, valid_text: str, config_dir: Path
) -> None:
    certificate = b"\x30\x82\x01\n\n"
    (config_dir / "secrets" / "wallet.der").write_bytes(certificate)
    text = valid_text.replace(
        'app_id = "wallet-bj"',
        'app_id = { env = "BP_TEST_WALLET_KEY" }\ncertificate = { file = "secrets/wallet.der" }',
    )
    config = load_config(write_config(text), providers)
    settings = config.branches["bj"].providers["wallet"].settings
    assert settings.app_id == "wallet-signing-key-0123456789"  # type: ignore[attr-defined]
    assert settings.certificate.get_secret_value() == certificate  # type: ignore[attr-defined]


def test_syntax_error_names_table_line_and_column(
    write_config: Write, providers: Providers, valid_text: str
) -> None:
    text = valid_text.replace('app_id = "wallet-bj"', 'app_id = "wallet-bj')
    path = write_config(text)
    [problem] = problems_of(path, providers)
    line = line_of(text, 'app_id = "wallet-bj')
    assert problem.startswith(
        f"{path}: [branches.bj.providers.wallet] TOML syntax error at line {line}, column "
    )


def test_unknown_provider_lists_installed_ones(
    write_config: Write, providers: Providers, valid_text: str
) -> None:
    path = write_config(valid_text + "\n[branches.bj.providers.paypal]\nenabled = true\n")
    assert problems_of(path, providers) == [
        f"{path}: [branches.bj.providers.paypal] unknown provider 'paypal'"
        " (installed: cardpay, wallet)"
    ]


def test_missing_and_wrong_settings_one_line_each(
    write_config: Write, providers: Providers, valid_text: str
) -> None:
    text = valid_text.replace(
        'merchant_id = "100001"\ngateway = "http://127.0.0.1:9/card"',
        'merchant_id = "12"\nlimits = { max_fen = 0 }\ngatway = "http://127.0.0.1:9/card"',
    )
    path = write_config(text)
    where = f"{path}: [branches.zj.providers.cardpay]"
    problems = problems_of(path, providers)
    assert problems[0].startswith(f"{where} gatway: unknown setting of cardpay (settings: ")
    assert sorted(problems[1:]) == [
        f"{where} gateway: Field required",
        f"{where} limits.max_fen: Input should be greater than 0",
        f"{where} merchant_id: String should match pattern '^[0-9]{{6}}$'",
    ]


def test_enabled_is_required_and_boolean(
    write_config: Write, providers: Providers, valid_text: str
) -> None:
    text = valid_text.replace("enabled = true   # the branch's first choice\n", "")
    text = text.replace(
        'enabled = true\napp_id = "wallet-bj"', 'enabled = "yes"\napp_id = "wallet-bj"'
    )
    path = write_config(text)
    assert problems_of(path, providers) == [
        f"{path}: [branches.zj.providers.cardpay] enabled: missing"
        " (write enabled = true or enabled = false)",
        f"{path}: [branches.bj.providers.wallet] enabled: must be true or false",
    ]


def test_inline_secret_is_refused_without_echoing_it(
    write_config: Write, providers: Providers, valid_text: str, pem_key: str
) -> None:
    inline_pem = pem_key.replace("\n", "\\n")
    text = valid_text.replace(
        'private_key = { file = "secrets/card.pem" }', f'private_key = "{inline_pem}"', 1
    ).replace('signing_key = { env = "BP_TEST_WALLET_KEY" }', 'signing_key = "hunter2-hunter2"', 1)
    path = write_config(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, providers)
    assert caught.value.problems == [
        f"{path}: [branches.zj.providers.cardpay] private_key: {INLINE}",
        f"{path}: [branches.zj.providers.wallet] signing_key: {INLINE}",
    ]
    assert pem_key.splitlines()[1] not in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_invalid_secret_is_reported_without_its_content(
    write_config: Write, providers: Providers, valid_text: str, config_dir: Path
) -> None:
    leaked = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
    (config_dir / "secrets" / "card.pem").write_text(f"-----BEGIN KEY-----\n{leaked}\n")
    path = write_config(valid_text)
    problems = problems_of(path, providers)
    assert problems == [
        f"{path}: [branches.zj.providers.cardpay] private_key:"
        " invalid value (details withheld: they would reveal a secret)",
        f"{path}: [branches.bj.providers.cardpay] private_key:"
        " invalid value (details withheld: they would reveal a secret)",
    ]
    assert leaked[:12] not in "\n".join(problems)


def test_unreadable_secret_file(write_config: Write, providers: Providers, valid_text: str) -> None:
    text = valid_text.replace("secrets/card.pem", "secrets/x.pem", 1)
    path = write_config(text)
    assert problems_of(path, providers) == [
        f"{path}: [branches.zj.providers.cardpay] private_key:"
        " file secrets/x.pem cannot be read (No such file or directory)"
    ]


def test_environment_variable_not_set(
    write_config: Write, providers: Providers, valid_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BP_TEST_WALLET_KEY")
    path = write_config(valid_text)
    reason = "signing_key: environment variable BP_TEST_WALLET_KEY is not set"
    assert problems_of(path, providers) == [
        f"{path}: [branches.zj.providers.wallet] {reason}",
        f"{path}: [branches.bj.providers.wallet] {reason}",
    ]


def test_duplicate_branch_gets_our_message(
    write_config: Write, providers: Providers, valid_text: str
) -> None:
    text = valid_text + '\n[branches.zj]\nname = "Again"\nprovince = "P"\noperator = "O"\n'
    path = write_config(text)
    [problem] = problems_of(path, providers)
    line = line_of(text, "[branches.zj]", occurrence=2)
    assert problem.startswith(
        f"{path}: [branches.zj] duplicate branch 'zj': declared a second time at line {line}"
    )


def test_duplicate_provider_table_gets_our_message(
    write_config: Write, providers: Providers, valid_text: str
) -> None:
    text = valid_text + "\n[branches.bj.providers.wallet]\nenabled = false\n"
    path = write_config(text)
    [problem] = problems_of(path, providers)
    assert problem.startswith(
        f"{path}: [branches.bj.providers.wallet] duplicate provider 'wallet' in branch 'bj'"
    )


def test_branch_table_rules(write_config: Write, providers: Providers, valid_text: str) -> None:
    text = valid_text + (
        '\n[branches.Hebei1]\nname = "Hebei"\nprovince = "Hebei"\noperator = "China Telecom"\n'
        '\n[branches.sc]\nname = "Sichuan"\ncurrency = "CNY"\n'
    )
    path = write_config(text)
    assert problems_of(path, providers) == [
        f"{path}: [branches.Hebei1] branch code must be 2 to 8 lower-case letters (a-z)",
        f"{path}: [branches.sc] unknown key 'currency'"
        " (a branch has name, province, operator and providers tables)",
        f"{path}: [branches.sc] province: missing",
        f"{path}: [branches.sc] operator: missing",
    ]


def test_every_problem_is_collected(
    write_config: Write, providers: Providers, valid_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BP_TEST_WALLET_KEY")
    text = (
        valid_text.replace('province = "Beijing"\n', "")
        .replace("secrets/card.pem", "secrets/gone.pem", 1)
        .replace('merchant_id = "100002"', 'merchant_id = "x"')
    )
    path = write_config(text + "\n[branches.zj.providers.paypal]\nenabled = true\n")
    problems = problems_of(path, providers)
    assert len(problems) == 6
    assert {problem.split("] ", 1)[0] + "]" for problem in problems} == {
        f"{path}: [branches.zj.providers.cardpay]",
        f"{path}: [branches.zj.providers.wallet]",
        f"{path}: [branches.zj.providers.paypal]",
        f"{path}: [branches.bj]",
        f"{path}: [branches.bj.providers.wallet]",
        f"{path}: [branches.bj.providers.cardpay]",
    }


def test_file_without_branches_is_refused(write_config: Write, providers: Providers) -> None:
    path = write_config("# emptied by mistake\n")
    assert problems_of(path, providers) == [f"{path}: [branches] no branch is defined"]


def test_missing_plugins_toml(tmp_path: Path, providers: Providers) -> None:
    path = tmp_path / "plugins.toml"
    assert problems_of(path, providers) == [f"{path}: cannot be read (No such file or directory)"]


def test_path_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRANCHPAY_PLUGINS_TOML", raising=False)
    assert default_path() == Path("plugins.toml")
    monkeypatch.setenv("BRANCHPAY_PLUGINS_TOML", "/etc/branchpay/plugins.toml")
    assert default_path() == Path("/etc/branchpay/plugins.toml")


def test_redaction_spares_pem_armour_but_not_key_material(pem_key: str) -> None:
    body_line = pem_key.splitlines()[1]
    withheld = "invalid value (details withheld: they would reveal a secret)"
    header = "expected -----BEGIN PRIVATE KEY----- at the start"
    assert redact(header, [pem_key]) == header
    assert redact(f"unexpected data after {body_line[5:17]}", [pem_key]) == withheld
    assert redact("Field required", ["hunter2-hunter2"]) == "Field required"


def test_a_branch_limits_its_methods_by_kind_and_amount(
    write_config: Write, providers: Providers, valid_text: str
) -> None:
    text = valid_text.replace(
        "enabled = true   # the branch's first choice\n",
        "enabled = true   # the branch's first choice\n"
        'methods = ["QR_CODE"]\nmethods_by_kind = { TOP_UP = ["QR_CODE"] }\n'
        "min_amount_fen = 100\nmax_amount_fen = 500000\n",
    )
    config = load_config(write_config(text), providers)
    card = config.branches["zj"].providers["cardpay"]
    assert card.methods == (PaymentMethod.QR_CODE,)
    assert card.methods_by_kind == {"TOP_UP": (PaymentMethod.QR_CODE,)}
    assert (card.min_amount_fen, card.max_amount_fen) == (100, 500000)
    # Not settings of the provider: its model never sees them.
    assert "methods" not in type(card.settings).model_fields


def test_wrong_methods_kinds_and_amounts_one_line_each(
    write_config: Write, providers: Providers, valid_text: str
) -> None:
    text = valid_text.replace(
        "enabled = true   # the branch's first choice\n",
        "enabled = true   # the branch's first choice\n"
        'methods = ["QR_CODE", "APP"]\nmethods_by_kind = { GADGET = ["PAGE"], PLAN = [] }\n'
        "min_amount_fen = 0\nmax_amount_fen = true\n",
    )
    path = write_config(text)
    where = f"{path}: [branches.zj.providers.cardpay]"
    assert sorted(problems_of(path, providers)) == sorted(
        [
            f"{where} methods: 'APP' not among PAGE, QR_CODE",
            f"{where} methods_by_kind: unknown kind 'GADGET' (kinds: NUMBER, PLAN, TOP_UP, HANDSET)",
            f"{where} methods_by_kind.PLAN: must be a non-empty list of methods (PAGE, QR_CODE)",
            f"{where} min_amount_fen: must be a whole number of fen from 1 to 10000000000"
            " (cardpay's limits)",
            f"{where} max_amount_fen: must be a whole number of fen from 1 to 10000000000"
            " (cardpay's limits)",
        ]
    )
    text = valid_text.replace(
        "enabled = true   # the branch's first choice\n",
        "enabled = true   # the branch's first choice\nmin_amount_fen = 900\nmax_amount_fen = 800\n",
    )
    path = write_config(text)
    assert problems_of(path, providers) == [
        f"{path}: [branches.zj.providers.cardpay] min_amount_fen: must not exceed max_amount_fen"
    ]


ACCOUNT = """\
[accounts.zj-group.cardpay]
gateway = "http://127.0.0.1:9/card"
private_key = { file = "secrets/card.pem" }

"""

UNDER_ACCOUNT = """\
[branches.hz]
name = "China Mobile Hangzhou"
province = "Zhejiang"
operator = "China Mobile"

[branches.hz.providers.cardpay]
enabled = true
account = "zj-group"
merchant_id = "200001"
"""


def test_branches_share_a_service_provider_account_with_their_own_sub_merchant_ids(
    write_config: Write, providers: Providers, valid_text: str, pem_key: str
) -> None:
    text = ACCOUNT + valid_text + "\n" + UNDER_ACCOUNT
    config = load_config(write_config(text), providers)
    hz = config.branches["hz"].providers["cardpay"]
    assert (hz.account, hz.account_enabled) == ("zj-group", True)
    # The account's ids and keys, with the branch's own sub-merchant id.
    assert hz.settings.merchant_id == "200001"  # type: ignore[attr-defined]
    assert hz.settings.gateway == "http://127.0.0.1:9/card"  # type: ignore[attr-defined]
    assert hz.settings.private_key.get_secret_value() == pem_key.rstrip("\n")  # type: ignore[attr-defined]
    # Branches with their own keys stay as they were, beside it.
    assert config.branches["zj"].providers["cardpay"].account is None

    suspended = ACCOUNT.replace(
        "[accounts.zj-group.cardpay]\n", "[accounts.zj-group.cardpay]\nenabled = false\n"
    )
    config = load_config(write_config(suspended + valid_text + "\n" + UNDER_ACCOUNT), providers)
    assert config.branches["hz"].providers["cardpay"].account_enabled is False


def test_account_problems_name_the_file_table_and_reason(
    write_config: Write, providers: Providers, valid_text: str
) -> None:
    # A branch pointing at an account nobody declared, and one without its sub-merchant id.
    text = valid_text + "\n" + UNDER_ACCOUNT.replace('"zj-group"', '"zj-isv"')
    text += UNDER_ACCOUNT.replace("hz", "nb").replace('merchant_id = "200001"\n', "")
    text = ACCOUNT + text
    path = write_config(text)
    assert problems_of(path, providers) == [
        f"{path}: [branches.hz.providers.cardpay] account: 'zj-isv' is not declared"
        " (no [accounts.zj-isv.cardpay] table declares it)",
        f"{path}: [branches.nb.providers.cardpay] merchant_id: missing (the branch's"
        " sub-merchant id under account 'zj-group')",
    ]

    # The account's keys stay in the account; the sub-merchant's stay in the branch; a
    # provider without a service-provider mode cannot have an account; a problem of the
    # account's settings is said once, naming the account's table, however many use it (a
    # branch under an invalid account waits for the account's problems to go).
    text = (
        ACCOUNT.replace("gateway =", 'merchant_id = "1"\ngateway =')
        + '[accounts.Bad_Name.cardpay]\ngateway = "x"\n'
        + '[accounts.wallets.wallet]\napp_id = "w"\n'
        + '[accounts.broken.cardpay]\ngateway = "http://127.0.0.1:9/card"\n'
        + 'private_key = { file = "secrets/missing.pem" }\n'
        + valid_text
        + "\n"
        + UNDER_ACCOUNT.replace('merchant_id = "200001"\n', 'merchant_id = "2"\ngateway = "y"\n')
        + UNDER_ACCOUNT.replace("hz", "nb").replace('"zj-group"', '"broken"')
        + UNDER_ACCOUNT.replace("hz", "wz").replace('"zj-group"', '"broken"')
    )
    path = write_config(text)
    problems = problems_of(path, providers)
    assert problems == [
        f"{path}: [accounts.zj-group.cardpay] merchant_id: a sub-merchant setting belongs in"
        " each branch's table, not in the account",
        f"{path}: [accounts.Bad_Name] account name must be 2 to 32 lower-case letters, digits"
        " or '-', starting with a letter",
        f"{path}: [accounts.wallets.wallet] wallet has no service-provider mode (it names no"
        " sub-merchant settings)",
        problems[3],
    ]
    assert problems[3].startswith(f"{path}: [accounts.broken.cardpay] private_key: file ")
    assert "missing.pem" in problems[3]


def test_a_branch_under_an_account_sets_only_its_sub_merchant_settings(
    write_config: Write, providers: Providers, valid_text: str
) -> None:
    text = (
        ACCOUNT
        + valid_text
        + "\n"
        + UNDER_ACCOUNT.replace('merchant_id = "200001"\n', 'merchant_id = "2"\ngateway = "y"\n')
    )
    path = write_config(text)
    assert problems_of(path, providers) == [
        f"{path}: [branches.hz.providers.cardpay] gateway: belongs in"
        " [accounts.zj-group.cardpay] (a branch under an account sets only merchant_id)"
    ]

    # A setting the account lacks is the account's problem, not the branch's.
    text = ACCOUNT.replace('gateway = "http://127.0.0.1:9/card"\n', "") + valid_text
    path = write_config(text + "\n" + UNDER_ACCOUNT)
    (problem,) = problems_of(path, providers)
    assert problem.startswith(f"{path}: [accounts.zj-group.cardpay] gateway: "), problem
