"""plugins.toml: which providers each branch enables, with their settings.

The file has one table per branch; inside it, one table per provider, in the
order the branch prefers them::

    # One table per branch; provider tables in the order the branch prefers them.
    [branches.zj]
    name = "China Mobile Zhejiang"
    province = "Zhejiang"
    operator = "China Mobile"

    [branches.zj.providers.alipay]
    enabled = true
    app_id = "2021000000000001"
    private_key = { file = ".data/secrets/zj-alipay-app-private.pem" }
    alipay_public_key = { file = ".data/secrets/zj-alipay-public.pem" }
    gateway = "http://127.0.0.1:8010/gateway.do"

    [branches.zj.providers.sandbox]
    enabled = true
    gateway = "http://127.0.0.1:8009"
    secret = { file = ".data/secrets/sandbox.key" }

Rules:

- A branch code matches ``^[a-z]{2,8}$``. A branch table holds exactly
  ``name``, ``province``, ``operator`` (non-empty strings) and ``providers``.
- A provider table's ``enabled`` (required, true or false) says whether new
  payments may use it. ``enabled = false`` keeps the provider configured, so
  payments already started with it still get notifications, refunds and
  queries. Every other key is a setting, validated by the provider class's
  pydantic ``Settings`` model; keys the model does not know are errors.
- A setting may be given as ``{ env = "NAME" }`` (the environment variable's
  value) or ``{ file = "path" }`` (the file's content; a relative path resolves
  against the directory of plugins.toml). Trailing line breaks of a text file
  are dropped; a ``SecretBytes`` setting gets the file's exact bytes. A secret
  setting (annotated ``SecretStr``/``SecretBytes``, or with
  ``json_schema_extra={"secret": True}``) must be given this way, never inline.
- The file's path is ``BRANCHPAY_PLUGINS_TOML``, by default ``./plugins.toml``.

Every problem is reported, not just the first, each naming the file, the table
path and the reason; a secret's value never appears in a message::

    plugins.toml: [branches.zj.providers.alipay] private_key: file .data/secrets/x.pem cannot be read (No such file or directory)
"""  # noqa: E501

from __future__ import annotations

import ast
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from api.plugins.contract import Provider

PATH_ENV = "BRANCHPAY_PLUGINS_TOML"
DEFAULT_PATH = Path("plugins.toml")

BRANCH_CODE = re.compile(r"^[a-z]{2,8}$")
BRANCH_KEYS = ("name", "province", "operator")
INLINE_SECRET = "secret must be given as { env = ... } or { file = ... }, never inline"

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_TOML_REDECLARED = re.compile(r"Cannot declare (\(.*\)) twice")
_TOML_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?")
# Short secrets (a PIN, "1234") would make redaction match ordinary words.
_MIN_REDACTED_LENGTH = 4
_REDACTED_RUN = 8


class ConfigError(Exception):
    """plugins.toml is invalid; ``problems`` has one line per problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(*problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One provider table of a branch: whether it takes new payments, and its settings."""

    name: str
    enabled: bool
    settings: BaseModel


@dataclass(frozen=True, slots=True)
class BranchConfig:
    code: str
    name: str
    province: str
    operator: str
    providers: dict[str, ProviderConfig]  # in the branch's order of preference

    def enabled_providers(self) -> list[str]:
        """Names of the providers new payments may use, in order of preference."""
        return [name for name, provider in self.providers.items() if provider.enabled]


@dataclass(frozen=True, slots=True)
class PluginsConfig:
    path: Path
    branches: dict[str, BranchConfig]  # in file order


def default_path() -> Path:
    """The plugins.toml to use when none is given: ``BRANCHPAY_PLUGINS_TOML`` or ./plugins.toml."""
    configured = os.environ.get(PATH_ENV)
    return Path(configured) if configured else DEFAULT_PATH


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
        raise ConfigError([_syntax_problem(path, text, exc)]) from None
    return _Validator(path, providers).document(document)


def is_secret_field(field: FieldInfo) -> bool:
    """A settings field whose value must come from { env } or { file } and never be shown."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get("secret") is True:
        return True
    return _mentions_secret_type(field.annotation)


def secret_values(settings: BaseModel) -> list[str]:
    """The plain text of every secret setting, to keep it out of messages."""
    values: list[str] = []
    for name, field in type(settings).model_fields.items():
        if not is_secret_field(field):
            continue
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr | SecretBytes):
            value = value.get_secret_value()
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str):
            values.append(value)
    return values


def redact(message: str, secrets: list[str]) -> str:
    """``message``, or a neutral one when it would reveal any part of ``secrets``.

    A validator may quote the start of a bad key in its message, so any run of
    :data:`_REDACTED_RUN` characters of a secret counts, not only the whole. PEM
    armour lines ("-----BEGIN PRIVATE KEY-----") are public and do not count.
    """
    for whole in secrets:
        secret = "\n".join(
            line for line in whole.splitlines() if not line.startswith("-----")
        ).strip()
        run = min(len(secret), _REDACTED_RUN)
        if run < _MIN_REDACTED_LENGTH:
            continue
        if any(secret[i : i + run] in message for i in range(len(secret) - run + 1)):
            return "invalid value (details withheld: they would reveal a secret)"
    return message


def _mentions_secret_type(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, SecretStr | SecretBytes):
        return True
    return any(_mentions_secret_type(arg) for arg in typing.get_args(annotation))


def _wants_bytes(field: FieldInfo) -> bool:
    annotation = field.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(
            isinstance(arg, type) and issubclass(arg, SecretBytes | bytes)
            for arg in typing.get_args(annotation)
        )
    return isinstance(annotation, type) and issubclass(annotation, SecretBytes | bytes)


def table_path(*keys: str) -> str:
    """``[branches.zj.providers.alipay]``, quoting keys that TOML cannot write bare."""
    parts = [key if _BARE_KEY.match(key) else '"' + key.replace('"', '\\"') + '"' for key in keys]
    return "[" + ".".join(parts) + "]"


def _syntax_problem(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> str:
    reason = str(exc)
    position = _TOML_POSITION.search(reason)
    line = int(position.group(1)) if position else None
    where = f"line {position.group(1)}, column {position.group(2)}" if position else ""
    bare_reason = _TOML_POSITION.sub("", reason).strip()
    redeclared = _TOML_REDECLARED.search(reason)
    if redeclared:
        keys = _literal_keys(redeclared.group(1))
        if keys is not None:
            table = table_path(*keys)
            if len(keys) == 2 and keys[0] == "branches":
                what = f"duplicate branch {keys[1]!r}"
            elif len(keys) == 4 and keys[0] == "branches" and keys[2] == "providers":
                what = f"duplicate provider {keys[3]!r} in branch {keys[1]!r}"
            else:
                what = "duplicate table"
            return f"{path}: {table} {what}: declared a second time at {where}"
    if bare_reason == "Cannot overwrite a value":
        bare_reason = "a key is given twice"
    header = _table_before(text, line) if line is not None else None
    located = f" {header}" if header else ""
    at = f" at {where}" if where else ""
    return f"{path}:{located} TOML syntax error{at}: {bare_reason}"


def _literal_keys(rendered: str) -> tuple[str, ...] | None:
    try:
        keys = ast.literal_eval(rendered)
    except (ValueError, SyntaxError):
        return None
    if isinstance(keys, tuple) and all(isinstance(key, str) for key in keys):
        return keys
    return None


def _table_before(text: str, line: int) -> str | None:
    """The header of the table the given 1-based line belongs to, as written."""
    for candidate in reversed(text.splitlines()[: max(line - 1, 0)]):
        header = _TOML_HEADER.match(candidate)
        if header:
            return f"[{header.group(1)}]"
    return None


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
        settings = self.settings(where, cls, {k: v for k, v in table.items() if k != "enabled"})
        if settings is None or not isinstance(enabled, bool):
            return None
        return ProviderConfig(name=name, enabled=enabled, settings=settings)

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
            if _is_reference(raw):
                as_bytes = field is not None and _wants_bytes(field)
                resolved = self.reference(where, key, raw, as_bytes=as_bytes)
                if resolved is None:
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

    def reference(
        self, where: str, key: str, reference: dict[str, Any], *, as_bytes: bool
    ) -> str | bytes | None:
        if len(reference) != 1:
            self.problem(where, f"{key}: give either {{ env = ... }} or {{ file = ... }}, not both")
            return None
        ((kind, target),) = reference.items()
        if not isinstance(target, str) or not target:
            self.problem(where, f"{key}: {kind} must be a non-empty string")
            return None
        if kind == "env":
            value = os.environ.get(target)
            if value is None:
                self.problem(where, f"{key}: environment variable {target} is not set")
                return None
            if not value:
                self.problem(where, f"{key}: environment variable {target} is empty")
                return None
            return value.encode("utf-8") if as_bytes else value
        file = Path(target).expanduser()
        if not file.is_absolute():
            file = self.path.parent / file
        try:
            content = file.read_bytes()
        except OSError as exc:
            self.problem(where, f"{key}: file {target} cannot be read ({exc.strerror or exc})")
            return None
        if as_bytes:
            return content
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            self.problem(where, f"{key}: file {target} is not UTF-8 text")
            return None
        text = text.rstrip("\r\n")
        if not text:
            self.problem(where, f"{key}: file {target} is empty")
            return None
        return text


def _is_reference(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and set(value) <= {"env", "file"}


def _fields_by_key(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Settings fields under every key plugins.toml may use for them (name and alias)."""
    fields: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        if isinstance(field.alias, str):
            fields[field.alias] = field
    return fields
