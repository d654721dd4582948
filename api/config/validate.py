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
CORE_KEYS = frozenset({"enabled", "methods", "methods_by_kind", "min_amount_fen", "max_amount_fen"})


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
            if key != "branches":
                self.problem(
                    "[top level]",
                    f"unknown key {key!r} (only [branches.<code>] tables belong here)",
                )
        branches_table = document.get("branches")
        branches: dict[str, BranchConfig] = {}
        if not isinstance(branches_table, dict) or not branches_table:
            self.problem("[branches]", "no branch is defined")
        else:
            for code, table in branches_table.items():
                branch = self.branch(code, table)
                if branch is not None:
                    branches[code] = branch
        if self.problems:
            raise ConfigError(self.problems)
        return PluginsConfig(path=self.path, branches=branches)

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
        if not isinstance(providers_table, dict):
            self.problem(where, "providers: must be a table of provider tables")
        else:
            for name, provider_table in providers_table.items():
                provider = self.provider(code, name, provider_table)
                if provider is not None:
                    providers[name] = provider
        if len(self.problems) > count:
            return None
        return BranchConfig(code=code, providers=providers, **details)

    def provider(self, branch: str, name: str, table: Any) -> ProviderConfig | None:
        where = table_path("branches", branch, "providers", name)
        cls = self.providers.get(name)
        if cls is None:
            installed = ", ".join(sorted(self.providers)) or "none"
            self.problem(where, f"unknown provider {name!r} (installed: {installed})")
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
        rules = self.payment_rules(where, cls, table)
        settings = self.settings(where, cls, {k: v for k, v in table.items() if k not in CORE_KEYS})
        if settings is None or not isinstance(enabled, bool) or len(self.problems) > count:
            return None
        return ProviderConfig(name=name, enabled=enabled, settings=settings, **rules)

    def payment_rules(
        self, where: str, cls: type[Provider], table: dict[str, Any]
    ) -> dict[str, Any]:
        """The branch's own rules for the provider: ``methods``, ``methods_by_kind``, amounts."""
        rules: dict[str, Any] = {}
        supported = ", ".join(m.value for m in cls.methods)
        methods = cls.methods
        if "methods" in table:
            listed = self.methods(where, "methods", table["methods"], cls.methods, supported)
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

    def settings(self, where: str, cls: type[Provider], table: dict[str, Any]) -> BaseModel | None:
        model = cls.Settings
        fields = _fields_by_key(model)
        accepts_extra = model.model_config.get("extra") == "allow"
        values: dict[str, Any] = {}
        secrets: list[str] = []
        # Settings already reported (bad reference, inline secret) are not
        # reported again as "Field required" by the model.
        reported: set[str] = set()
        count = len(self.problems)
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
        try:
            settings = model.model_validate(values)
        except ValidationError as exc:
            for error in exc.errors(include_input=False, include_url=False):
                if error["loc"] and str(error["loc"][0]) in reported:
                    continue
                field_path = ".".join(str(part) for part in error["loc"]) or "settings"
                self.problem(where, f"{field_path}: {redact(error['msg'], secrets)}")
            return None
        except Exception as exc:
            # A validator bug in the plugin; its message may hold anything, so only the type.
            self.problem(where, f"settings could not be validated ({type(exc).__name__})")
            return None
        return settings if len(self.problems) == count else None


def _fields_by_key(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Settings fields under every key plugins.toml may use for them (name and alias)."""
    fields: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        if isinstance(field.alias, str):
            fields[field.alias] = field
    return fields
