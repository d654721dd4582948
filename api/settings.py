"""Service settings, read from the environment (prefix ``BRANCHPAY_``) by pydantic-settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BRANCHPAY_", extra="ignore")

    mongodb_uri: str | None = Field(
        default=None,
        description="Any MongoDB 7+ replica set or sharded cluster; unset means the embedded store.",
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
    seed_demo_orders: int = Field(default=300, ge=0)
    bench_mode: bool = Field(
        default=False,
        description="Mount the plain JSON endpoints under /bench that `make bench` compares with.",
    )

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
