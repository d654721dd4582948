"""plugins.toml's model: which providers each branch enables, with their settings.

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

This module holds the tables a valid file becomes and :class:`ConfigError`;
the other jobs live beside it: :mod:`api.config.validate` (``load_config``,
``parse_config``), :mod:`api.config.secrets` (the ``{ env }``/``{ file }``
policy and redaction) and :mod:`api.config.wording` (table paths and TOML
syntax errors as messages).
"""  # noqa: E501

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from api.plugins.contract import PaymentMethod

PATH_ENV = "BRANCHPAY_PLUGINS_TOML"
DEFAULT_PATH = Path("plugins.toml")

BRANCH_CODE = re.compile(r"^[a-z]{2,8}$")
ACCOUNT_NAME = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
BRANCH_KEYS = ("name", "province", "operator")


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
    # A service-provider account ([accounts.<name>.<provider>]) the settings come from.
    account: str | None = None
    account_enabled: bool = True
    # The methods the branch offers with the provider (None: all of the provider's).
    methods: tuple[PaymentMethod, ...] | None = None
    # By offering kind (NUMBER, PLAN, TOP_UP, HANDSET): the only methods for such orders.
    methods_by_kind: Mapping[str, tuple[PaymentMethod, ...]] = field(default_factory=dict)
    min_amount_fen: int | None = None
    max_amount_fen: int | None = None


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
