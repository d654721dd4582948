"""Service settings, read from the environment (prefix ``BRANCHPAY_``) by pydantic-settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BRANCHPAY_", extra="ignore")

    mongodb_uri: str | None = Field(
        default=None,
        description="Any MongoDB 7+ replica set or sharded cluster; unset: the embedded store.",
    )
    database: str = "branchpay"
    plugins_toml: Path = Path("plugins.toml")
    data_dir: Path = Path(".data")
    db_port: int = Field(
        default=27117, description="Port of the embedded store started by `serve`."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        default=None,
        description="Base URL the payment platforms reach us at; default http://HOST:PORT.",
    )
    order_ttl_seconds: int = Field(default=30 * 60, ge=60)
    expiry_interval_seconds: float = Field(default=5.0, gt=0)
    reconcile_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often to ask the platforms about PENDING attempts."
    )
    reconcile_min_age_seconds: float = Field(
        default=120.0,
        ge=0,
        description="Attempts younger than this are left to their notifications.",
    )
    max_body_bytes: int = MIB
    max_page_size: int = 100
    default_page_size: int = 20
    graphiql: bool = True
    introspection: bool = Field(default=True, description="Off hides the schema from clients.")
    max_query_depth: int = Field(default=12, ge=1)
    max_aliases: int = Field(default=15, ge=0)
    max_tokens: int = Field(default=2000, ge=10)
    rate_limit_per_second: float = Field(
        default=20.0, gt=0, description="Average requests per second per API key."
    )
    rate_limit_burst: int = Field(default=40, ge=1, description="Requests a key may burst.")
    pii_key: SecretStr | None = Field(
        default=None, description="Key (32+ bytes, base64 or text) that protects personal data."
    )
    pii_key_file: Path | None = Field(default=None, description="A file holding the PII key.")
    seed_demo_orders: int = Field(default=300, ge=0)
    gc_tuning: bool = Field(
        default=False,
        description="Freeze start-up objects and collect garbage in larger batches: "
        "about 7 % less CPU per page of orders, but memory crept 8.8 % in a 10-minute "
        "soak where the default stays flat (docs/performance.md).",
    )
    bench_mode: bool = Field(
        default=False,
        description="Mount the plain JSON endpoints under /bench that `make bench` compares with.",
    )

    def pii_master_key(self) -> bytes:
        """The PII key from BRANCHPAY_PII_KEY or BRANCHPAY_PII_KEY_FILE, never the repository."""
        if self.pii_key is not None:
            raw = self.pii_key.get_secret_value().encode()
        elif self.pii_key_file is not None:
            try:
                raw = self.pii_key_file.read_bytes().strip()
            except OSError as error:
                raise ValueError(
                    f"the PII key file {self.pii_key_file} cannot be read ({error.strerror})"
                ) from None
        else:
            raise ValueError(
                "no PII key: set BRANCHPAY_PII_KEY_FILE (or BRANCHPAY_PII_KEY) to 32 random bytes "
                "or more; `make run` creates one under .data/secrets for the demo"
            )
        if len(raw) < 32:
            raise ValueError("the PII key must be at least 32 bytes")
        return raw

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
