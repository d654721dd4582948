"""Validating plugins.toml: every problem found, each with its file, table and reason.

:func:`load_config` reads the file, :func:`parse_config` checks a text as if it
were stored at a path (so an edit can be checked before it is written). The
validator walks the whole document before giving up, so one run reports every
problem; the tables it returns are :mod:`api.config.model`'s, settings are
validated by each provider class's pydantic ``Settings``, secrets follow
:mod:`api.config.secrets` and messages :mod:`api.config.wording`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from api.config.model import (
    ACCOUNT_NAME,
    BRANCH_CODE,
    BRANCH_KEYS,
    BranchConfig,
    ConfigError,
    PluginsConfig,
    ProviderConfig,
)
from api.config.secrets import (
    INLINE_SECRET,
    UnresolvedReference,
    is_reference,
    is_secret_field,
    redact,
    resolve_reference,
    wants_bytes,
)
from api.config.wording import syntax_problem, table_path
from api.domain.order import OfferingKind
from api.plugins.contract import PaymentMethod, Provider

# Keys of a branch's provider table that are branchpay's, not the provider's settings.
CORE_KEYS = frozenset(
    {"enabled", "account", "methods", "methods_by_kind", "min_amount_fen", "max_amount_fen"}
)


def load_config(path: Path, providers: Mapping[str, type[Provider]]) -> PluginsConfig:
    """Read and validate plugins.toml against the installed provider classes.

    Raises :class:`ConfigError` listing every problem found.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    return parse_config(text, path, providers)


def parse_config(text: str, path: Path, providers: Mapping[str, type[Provider]]) -> PluginsConfig:
    """Validate the text of a plugins.toml as if it were stored at ``path``.

    Lets an edit be checked before it is written; relative ``{ file }``
    references resolve against ``path``'s directory.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([syntax_problem(path, text, exc)]) from None
    return _Validator(path, providers).document(document)


class _Validator:
    """Walks a parsed document, collecting every problem before giving up."""

    def __init__(self, path: Path, providers: Mapping[str, type[Provider]]) -> None:
        self.path = path
        self.providers = providers
        self.problems: list[str] = []

    def problem(self, table: str, reason: str) -> None:
        self.problems.append(f"{self.path}: {table} {reason}")

    def document(self, document: dict[str, Any]) -> PluginsConfig:
        for key in document:
            if key not in ("branches", "accounts"):
                self.problem(
                    "[top level]",
                    f"unknown key {key!r} (only [branches.<code>] and [accounts.<name>]"
                    " tables belong here)",
                )
        self.accounts = self.account_tables(document.get("accounts", {}))
        self.used_accounts: set[tuple[str, str]] = set()
        branches_table = document.get("branches")
        branches: dict[str, BranchConfig] = {}
        if not isinstance(branches_table, dict) or not branches_table:
            self.problem("[branches]", "no branch is defined")
        else:
            for code, table in branches_table.items():
                branch = self.branch(code, table)
                if branch is not None:
                    branches[code] = branch
        for (account, name), table in self.accounts.items():
            if (account, name) not in self.used_accounts:
                # No branch uses it: its settings cannot be completed, but its keys and
                # references are still checked.
                cls = self.providers[name]
                self.setting_values(table_path("accounts", account, name), cls, table, set(), [])
        if self.problems:
            # An account's problem is found once per branch using it; say it once.
            raise ConfigError(list(dict.fromkeys(self.problems)))
        return PluginsConfig(path=self.path, branches=branches)

    def account_tables(self, accounts: Any) -> dict[tuple[str, str], dict[str, Any]]:
        """The ``[accounts.<name>.<provider>]`` tables: a service provider's ids and keys.

        Each holds the provider's settings except the sub-merchant ones, which each branch
        using the account gives itself, and may say ``enabled = false`` to suspend the
        account for every branch under it.
        """
        found: dict[tuple[str, str], dict[str, Any]] = {}
        # Declared but invalid (already reported): a branch using one is not reported again.
        self.invalid_accounts: set[tuple[str, str]] = set()
        if not isinstance(accounts, dict):
            self.problem("[accounts]", "must be a table of [accounts.<name>.<provider>] tables")
            return found
        for account, by_provider in accounts.items():
            where = table_path("accounts", account)
            if not ACCOUNT_NAME.match(account):
                self.problem(
                    where,
                    "account name must be 2 to 32 lower-case letters, digits or '-', "
                    "starting with a letter",
                )
                continue
            if not isinstance(by_provider, dict) or not by_provider:
                self.problem(
                    where, "must hold one table per provider ([accounts.<name>.<provider>])"
                )
                continue
            for name, table in by_provider.items():
                where = table_path("accounts", account, name)
                self.invalid_accounts.add((account, name))
                cls = self.installed(where, name)
                if cls is None:
                    continue
                if not isinstance(table, dict):
                    self.problem(where, "must be a table")
                    continue
                if not cls.sub_merchant_settings:
                    self.problem(
                        where,
                        f"{name} has no service-provider mode (it names no sub-merchant settings)",
                    )
                    continue
                enabled = table.get("enabled", True)
                if not isinstance(enabled, bool):
                    self.problem(where, "enabled: must be true or false")
                    continue
                subs = [key for key in table if key in cls.sub_merchant_settings]
                for key in subs:
                    self.problem(
                        where,
                        f"{key}: a sub-merchant setting belongs in each branch's table, "
                        "not in the account",
                    )
                if not subs:
                    found[(account, name)] = table
                    self.invalid_accounts.discard((account, name))
        return found

    def branch(self, code: str, table: Any) -> BranchConfig | None:
        where = table_path("branches", code)
        count = len(self.problems)
        if not BRANCH_CODE.match(code):
            self.problem(where, "branch code must be 2 to 8 lower-case letters (a-z)")
        if not isinstance(table, dict):
            self.problem(where, "must be a table")
            return None
        for key in table:
            if key not in (*BRANCH_KEYS, "providers"):
                self.problem(
                    where,
                    f"unknown key {key!r} (a branch has name, province, operator and"
                    " providers tables)",
                )
        details: dict[str, str] = {}
        for key in BRANCH_KEYS:
            value = table.get(key)
            if value is None:
                self.problem(where, f"{key}: missing")
            elif not isinstance(value, str) or not value.strip():
                self.problem(where, f"{key}: must be a non-empty string")
            else:
                details[key] = value
        providers_table = table.get("providers", {})
        providers: dict[str, ProviderConfig] = {}
        invalid = False
        if not isinstance(providers_table, dict):
            self.problem(where, "providers: must be a table of provider tables")
        else:
            for name, provider_table in providers_table.items():
                provider = self.provider(code, name, provider_table)
                if provider is None:
                    # Reported, here or (an invalid account's) against its own table.
                    invalid = True
                else:
                    providers[name] = provider
        if invalid or len(self.problems) > count:
            return None
        return BranchConfig(code=code, providers=providers, **details)

    def installed(self, where: str, name: str) -> type[Provider] | None:
        """The installed provider class of that name, or None after reporting it unknown."""
        cls = self.providers.get(name)
        if cls is None:
            installed = ", ".join(sorted(self.providers)) or "none"
            self.problem(where, f"unknown provider {name!r} (installed: {installed})")
        return cls

    def provider(self, branch: str, name: str, table: Any) -> ProviderConfig | None:
        where = table_path("branches", branch, "providers", name)
        cls = self.installed(where, name)
        if cls is None:
            return None
        if not isinstance(table, dict):
            self.problem(where, "must be a table")
            return None
        enabled = table.get("enabled")
        if enabled is None:
            self.problem(where, "enabled: missing (write enabled = true or enabled = false)")
        elif not isinstance(enabled, bool):
            self.problem(where, "enabled: must be true or false")
        count = len(self.problems)
        own = {k: v for k, v in table.items() if k not in CORE_KEYS}
        account: dict[str, Any] = {}
        origins: dict[str, str] = {}
        if "account" in table:
            under = self.account(where, name, cls, table["account"], own)
            if under is None:
                self.payment_rules(where, cls, table, cls.methods)
                return None
            account["account"], account["account_enabled"], origins, own = under
        settings = self.settings(where, cls, own, origins)
        usable = cls.methods if settings is None else self.usable_methods(where, cls, settings)
        rules = self.payment_rules(where, cls, table, usable)
        if settings is None or not isinstance(enabled, bool) or len(self.problems) > count:
            return None
        if "methods" not in rules and usable != cls.methods:
            rules["methods"] = usable
        return ProviderConfig(name=name, enabled=enabled, settings=settings, **rules, **account)

    def usable_methods(
        self, where: str, cls: type[Provider], settings: BaseModel
    ) -> tuple[PaymentMethod, ...]:
        try:
            usable = tuple(m for m in cls.methods_with(settings) if m in cls.methods)
        except Exception as exc:
            # A plugin bug; its message may hold anything, so only the type.
            self.problem(where, f"methods could not be derived ({type(exc).__name__})")
            return cls.methods
        if not usable:
            self.problem(where, f"{cls.name} offers no method with these settings")
        return usable

    def account(
        self,
        where: str,
        name: str,
        cls: type[Provider],
        account: Any,
        own: dict[str, Any],
    ) -> tuple[str, bool, dict[str, str], dict[str, Any]] | None:
        """A branch under a service-provider account: the account's settings and its own.

        Returns the account's name, whether it is enabled, which table each merged setting
        came from, and the merged settings; or None after reporting why not.
        """
        subs = cls.sub_merchant_settings
        if not isinstance(account, str) or not ACCOUNT_NAME.match(account):
            self.problem(where, "account: must be the name of an [accounts.<name>] table")
            return None
        account_where = table_path("accounts", account, name)
        table = self.accounts.get((account, name))
        if table is None:
            if (account, name) in self.invalid_accounts:
                # Its table's problems are reported; the branch cannot load until they go.
                return None
            if not subs:
                reason = f"{name} has no service-provider mode"
            else:
                reason = f"no {account_where} table declares it"
            self.problem(where, f"account: {account!r} is not declared ({reason})")
            return None
        self.used_accounts.add((account, name))
        count = len(self.problems)
        for key in own:
            if key not in subs:
                self.problem(
                    where,
                    f"{key}: belongs in {account_where} (a branch under an account sets only "
                    f"{', '.join(subs)})",
                )
        if subs[0] not in own:
            self.problem(
                where,
                f"{subs[0]}: missing (the branch's sub-merchant id under account {account!r})",
            )
        if len(self.problems) > count:
            return None
        shared = {k: v for k, v in table.items() if k != "enabled"}
        # Every setting but the sub-merchant's is the account's: one it lacks is its problem.
        origins = {key: account_where for key in _fields_by_key(cls.Settings) if key not in subs}
        return account, table.get("enabled", True), origins, shared | own

    def payment_rules(
        self,
        where: str,
        cls: type[Provider],
        table: dict[str, Any],
        usable: tuple[PaymentMethod, ...],
    ) -> dict[str, Any]:
        """The branch's own rules for the provider: ``methods``, ``methods_by_kind``, amounts.

        ``usable``: the provider's methods with the branch's settings (``methods_with``).
        """
        rules: dict[str, Any] = {}
        supported = ", ".join(m.value for m in usable)
        methods = usable
        if "methods" in table:
            listed = self.methods(where, "methods", table["methods"], usable, supported)
            if listed is not None:
                rules["methods"] = methods = listed
        if "methods_by_kind" in table:
            by_kind = table["methods_by_kind"]
            kinds = ", ".join(k.value for k in OfferingKind)
            if not isinstance(by_kind, dict):
                self.problem(where, f"methods_by_kind: must be a table of kinds ({kinds})")
            else:
                found: dict[str, tuple[PaymentMethod, ...]] = {}
                offered = ", ".join(m.value for m in methods)
                for kind, value in by_kind.items():
                    if kind not in {k.value for k in OfferingKind}:
                        self.problem(
                            where, f"methods_by_kind: unknown kind {kind!r} (kinds: {kinds})"
                        )
                        continue
                    listed = self.methods(where, f"methods_by_kind.{kind}", value, methods, offered)
                    if listed is not None:
                        found[kind] = listed
                rules["methods_by_kind"] = found
        low, high = cls.amount_limits_fen
        for key in ("min_amount_fen", "max_amount_fen"):
            if key not in table:
                continue
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                self.problem(
                    where,
                    f"{key}: must be a whole number of fen from {low} to {high} "
                    f"({cls.name}'s limits)",
                )
            else:
                rules[key] = value
        if rules.get("min_amount_fen", low) > rules.get("max_amount_fen", high):
            self.problem(where, "min_amount_fen: must not exceed max_amount_fen")
        return rules

    def methods(
        self,
        where: str,
        key: str,
        value: Any,
        allowed: tuple[PaymentMethod, ...],
        wording: str,
    ) -> tuple[PaymentMethod, ...] | None:
        if not isinstance(value, list) or not value:
            self.problem(where, f"{key}: must be a non-empty list of methods ({wording})")
            return None
        names = {m.value for m in allowed}
        bad = [m for m in value if not isinstance(m, str) or m not in names]
        if bad:
            self.problem(where, f"{key}: {', '.join(map(repr, bad))} not among {wording}")
            return None
        return tuple(m for m in allowed if m.value in value)

    def settings(
        self,
        where: str,
        cls: type[Provider],
        table: dict[str, Any],
        origins: Mapping[str, str] | None = None,
    ) -> BaseModel | None:
        """The provider's validated settings; ``origins`` names the table a key came from
        when it is not ``where`` (a service-provider account's)."""
        origins = origins or {}
        secrets: list[str] = []
        # Settings already reported (bad reference, inline secret) are not
        # reported again as "Field required" by the model.
        reported: set[str] = set()
        count = len(self.problems)
        values: dict[str, Any] = {}
        by_table: dict[str, dict[str, Any]] = {}
        for key, raw in table.items():
            by_table.setdefault(origins.get(key, where), {})[key] = raw
        for table_where, part in by_table.items():
            values |= self.setting_values(table_where, cls, part, reported, secrets)
        try:
            settings = cls.Settings.model_validate(values)
        except ValidationError as exc:
            for error in exc.errors(include_input=False, include_url=False):
                first = str(error["loc"][0]) if error["loc"] else ""
                if first in reported:
                    continue
                field_path = ".".join(str(part) for part in error["loc"]) or "settings"
                self.problem(
                    origins.get(first, where), f"{field_path}: {redact(error['msg'], secrets)}"
                )
            return None
        except Exception as exc:
            # A validator bug in the plugin; its message may hold anything, so only the type.
            self.problem(where, f"settings could not be validated ({type(exc).__name__})")
            return None
        return settings if len(self.problems) == count else None

    def setting_values(
        self,
        where: str,
        cls: type[Provider],
        table: dict[str, Any],
        reported: set[str],
        secrets: list[str],
    ) -> dict[str, Any]:
        """The table's settings with references resolved; unknown keys, unreadable references
        and inline secrets reported (their keys added to ``reported``)."""
        model = cls.Settings
        fields = _fields_by_key(model)
        accepts_extra = model.model_config.get("extra") == "allow"
        values: dict[str, Any] = {}
        for key, raw in table.items():
            field = fields.get(key)
            if field is None and not accepts_extra:
                known = ", ".join(sorted(fields)) or "none"
                self.problem(where, f"{key}: unknown setting of {cls.name} (settings: {known})")
                continue
            secret = field is not None and is_secret_field(field)
            if is_reference(raw):
                as_bytes = field is not None and wants_bytes(field)
                try:
                    resolved = resolve_reference(key, raw, base=self.path.parent, as_bytes=as_bytes)
                except UnresolvedReference as unresolved:
                    self.problem(where, str(unresolved))
                    reported.add(key)
                    continue
                if secret:
                    secrets.append(
                        resolved.decode("utf-8", "replace")
                        if isinstance(resolved, bytes)
                        else resolved
                    )
                values[key] = resolved
            elif secret:
                self.problem(where, f"{key}: {INLINE_SECRET}")
                reported.add(key)
            else:
                values[key] = raw
        return values


def _fields_by_key(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Settings fields under every key plugins.toml may use for them (name and alias)."""
    fields: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        if isinstance(field.alias, str):
            fields[field.alias] = field
    return fields
