"""Service settings, read from the environment (prefix ``BRANCHPAY_``) by pydantic-settings."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024

# The request limits, in the order docs/security.md lists them (a test holds the two together).
LIMITS = (
    "max_body_bytes",
    "max_tokens",
    "max_query_depth",
    "max_aliases",
    "max_directives",
    "max_query_cost",
    "count_cost",
    "max_selection_width",
    "list_cost_factor",
    "default_page_size",
    "max_page_size",
    "max_variable_list_items",
    "max_variable_values",
    "max_variable_depth",
    "max_string_length",
    "rate_limit_per_second",
    "rate_limit_burst",
    "failed_auth_per_second",
    "failed_auth_burst",
    "rate_limit_store_timeout_seconds",
    "rate_limit_fallback_seconds",
    "ws_connection_init_timeout_seconds",
    "ws_max_operations_per_connection",
    "ws_max_subscriptions_per_key",
    "ws_subscription_queue_events",
    "key_recheck_interval_seconds",
    "key_cache_ttl_seconds",
    "store_timeout_seconds",
    "store_server_selection_timeout_seconds",
    "store_connect_timeout_seconds",
    "store_socket_timeout_seconds",
    "store_retry_after_seconds",
)


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
    simulator_port: int = Field(
        default=8009,
        ge=0,
        le=65535,
        description=(
            "`serve --demo`: the first gateway simulator's loopback port, the others follow"
            " in provider-name order; 0: free ports."
        ),
    )
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        default=None,
        description="Base URL the payment platforms reach us at; default http://HOST:PORT.",
    )
    order_ttl_seconds: int = Field(default=30 * 60, ge=60)
    expiry_interval_seconds: float = Field(default=5.0, gt=0)
    webhooks_allow_loopback: bool = Field(
        default=False,
        description="Allow http:// loopback webhook URLs (make run, tests); off in production.",
    )
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often each process looks for due webhook deliveries."
    )
    webhook_delivery: bool = Field(
        default=True,
        description="This process sends webhook deliveries (off: it only records events).",
    )
    webhook_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a process holds a claimed delivery; another takes it after that "
        "(longer than webhook_timeout_seconds).",
    )
    webhook_retry_scale: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Multiplies the retry schedule's pauses; tests shorten the clock with it.",
    )
    webhook_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=30)
    webhook_timeout_seconds: float = Field(
        default=15.0, gt=0, le=60, description="A whole webhook try: connect, send, read."
    )
    reconcile_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often to ask the platforms about PENDING attempts."
    )
    reconcile_min_age_seconds: float = Field(
        default=120.0,
        ge=0,
        description="Attempts younger than this are left to their notifications.",
    )
    counter_poll_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="A counter sale (PAYMENT_CODE) the payer is still confirming is queried "
        "this often (WeChat Pay suggests 5-10 s).",
    )
    counter_wait_seconds: float = Field(
        default=45.0,
        gt=0,
        le=600,
        description="How long a counter sale may stay unknown before it is reversed at the "
        "platform (WeChat Pay suggests 30-45 s; it asks for no reverse within 15 s).",
    )
    counter_reverse_retry_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="The pause before a reverse the platform refused for now is asked again.",
    )
    counter_tick_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often each process looks for counter sales due a step.",
    )
    job_lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How long a process holds the lease of a background sweep (expiry, "
        "reconciliation) between renewals; a process that dies mid-sweep leaves the sweep "
        "to another after this (docs/deployment.md).",
    )
    bill_reconcile: bool = Field(
        default=True,
        description="Reconcile yesterday's bills (Beijing day) daily, once per cluster.",
    )
    bill_reconcile_at: str = Field(
        default="10:00",
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="Beijing time (HH:MM) after which the daily bill reconciliation runs; "
        "the platforms publish day D on D+1 in the morning.",
    )
    bill_tolerance_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="How far our time of a payment or refund may lie from the platform's "
        "across midnight and still count as that bill day's (docs/reconciliation.md).",
    )
    discrepancy_stale_days: int = Field(
        default=3, ge=0, description="An open discrepancy older than this many days is flagged."
    )
    max_body_bytes: int = Field(
        default=MIB, ge=1024, description="Bytes of an HTTP body or a WebSocket message."
    )
    max_page_size: int = Field(default=100, ge=1, description="The largest `first` of a page.")
    default_page_size: int = Field(default=20, ge=1, description="`first` when none is given.")
    graphiql: bool = True
    demo_pages: bool = Field(
        default=False,
        description="Serve the partner storefront at /demo with a demo partner key of its own "
        "(`serve --demo` turns it on; off: /demo is 404).",
    )
    demo_form_origins: list[str] = Field(
        default_factory=list,
        description="Origins the storefront's FORM_POST payments may post to (CSP form-action); "
        "`serve --demo` sets the gateway simulators' loopback origins.",
    )
    assets_dir: Path = Field(
        default=Path(".data/assets"),
        description="Where `make install` puts the npm packages of GraphiQL, its explorer and "
        "React (npm ci of assets/package-lock.json); the pages load them from the service.",
    )
    introspection: bool = Field(default=True, description="Off hides the schema from clients.")
    config_editing: bool = Field(
        default=False,
        description="Let the API edit plugins.toml (`setProviderEnabled`, the /admin console's"
        " provider switches); on under `serve --demo`, off in production: there an admin runs"
        " `branchpay providers enable|disable` instead.",
    )
    max_query_depth: int = Field(default=12, ge=1, description="Nesting of fields in one document.")
    max_aliases: int = Field(
        default=15, ge=0, description="Aliased fields in one document, counted at every spread."
    )
    max_directives: int = Field(
        default=50, ge=0, description="Directives in one document, counted at every spread."
    )
    max_tokens: int = Field(default=2000, ge=10, description="Lexical tokens in one document.")
    max_query_cost: int = Field(
        default=20_000,
        ge=1,
        description="Points one request may cost: 1 a field, a connection's children times "
        "`first`, a list's children times list_cost_factor.",
    )
    count_cost: int = Field(
        default=1000,
        ge=1,
        description="Points of a connection's totalCount (a count walks every match).",
    )
    max_selection_width: int = Field(
        default=200,
        ge=1,
        description="Fields one selection set may hold, fragments spread into it included.",
    )
    list_cost_factor: int = Field(
        default=5, ge=1, description="How many elements a list field is assumed to return."
    )
    max_variable_list_items: int = Field(
        default=100, ge=1, description="Elements of any one list in the variables."
    )
    max_variable_values: int = Field(
        default=2000, ge=1, description="Values in the variables, nested ones included."
    )
    max_variable_depth: int = Field(
        default=8, ge=1, description="Nesting of objects and lists in the variables."
    )
    max_string_length: int = Field(
        default=4096,
        ge=1,
        description="Characters of any one string argument (free-text inputs have lower limits).",
    )
    rate_limit_per_second: float = Field(
        default=500.0, gt=0, description="Query-cost points a key regains per second."
    )
    rate_limit_burst: int = Field(
        default=20_000, ge=1, description="Query-cost points a key may spend at once."
    )
    failed_auth_per_second: float = Field(
        default=1.0, gt=0, description="Failed authentications an address may make per second."
    )
    failed_auth_burst: int = Field(
        default=10, ge=1, description="Failed authentications an address may make at once."
    )
    rate_limit_store_timeout_seconds: float = Field(
        default=0.5,
        gt=0,
        description="Time a rate-limit spend may wait for the store before this process decides.",
    )
    rate_limit_fallback_seconds: float = Field(
        default=2.0,
        gt=0,
        description="After the store failed a rate-limit spend, how long budgets stay per process.",
    )
    ws_connection_init_timeout_seconds: float = Field(
        default=5.0, gt=0, description="A WebSocket must send connection_init within this (4408)."
    )
    ws_max_operations_per_connection: int = Field(
        default=20, ge=1, description="Operations (subscriptions included) open on one socket."
    )
    ws_max_subscriptions_per_key: int = Field(
        default=100, ge=1, description="Subscriptions one API key may hold open in one process."
    )
    ws_subscription_queue_events: int = Field(
        default=100,
        ge=1,
        description="Changes that may wait for one subscription; one further behind is ended "
        "with SUBSCRIBER_TOO_SLOW.",
    )
    key_recheck_interval_seconds: float = Field(
        default=0.5,
        gt=0,
        description="While the keys' change stream is down, how often open WebSockets' keys "
        "are read again for revocation (4403).",
    )
    key_cache: bool = Field(
        default=True,
        description="Keep the API keys a process has seen in memory (kept true by the keys' "
        "change stream); false reads every request's key from the store (the bench's "
        "'before').",
    )
    key_cache_ttl_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="While the keys' change stream is down, how long a key read from the store "
        "is trusted without reading it again.",
    )
    store_timeout_seconds: float = Field(
        default=4.0,
        gt=0,
        description="Time the store may take for one request's work before STORE_UNAVAILABLE.",
    )
    store_server_selection_timeout_seconds: float = Field(
        default=3.0, gt=0, description="Time to find a usable store server."
    )
    store_connect_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Time to open a connection to the store."
    )
    store_socket_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A store reply not received in this is an outage."
    )
    store_retry_after_seconds: int = Field(
        default=5, ge=1, description="Retry-After sent with STORE_UNAVAILABLE."
    )
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
    graphql_fast_path: bool = Field(
        default=True,
        description="Complete plain fields without graphql-core's per-field machinery "
        "(api/schema/execution.py); false runs Strawberry's stock execution.",
    )
    store_journal: bool = Field(
        default=True,
        description="Acknowledge a write only once it is in the store's journal (j: true), so "
        "a store killed right after an answer still has it (docs/security.md, Store outages).",
    )

    # Observability (docs/operations.md).
    metrics: bool = Field(
        default=True,
        description="Record Prometheus metrics and serve them at /metrics (port or token below).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token that /metrics on the API port asks for; unset: not served there.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="A separate port serving /metrics without a token (bound to metrics_host).",
    )
    metrics_host: str = Field(default="127.0.0.1", description="The address metrics_port binds.")
    log_format: Literal["json", "console"] = Field(
        default="json", description="json: one JSON object a line; console: readable lines."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP endpoint receiving traces (extra `otel`); unset: no tracing.",
    )
    otel_service_name: str = Field(default="branchpay", description="service.name of the spans.")

    @model_validator(mode="after")
    def _one_request_fits_the_budget(self) -> Settings:
        if self.max_query_cost > self.rate_limit_burst:
            raise ValueError(
                f"max_query_cost ({self.max_query_cost}) exceeds rate_limit_burst "
                f"({self.rate_limit_burst}): a request that costs the maximum could never run"
            )
        return self

    @model_validator(mode="after")
    def _a_lease_outlasts_a_try(self) -> Settings:
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError(
                f"webhook_lease_seconds ({self.webhook_lease_seconds}) must exceed "
                f"webhook_timeout_seconds ({self.webhook_timeout_seconds}): a try still running "
                "when its lease ends would be sent twice"
            )
        return self

    @property
    def bill_reconcile_time(self) -> time:
        """``bill_reconcile_at`` as a time of day (Beijing)."""
        hours, minutes = self.bill_reconcile_at.split(":")
        return time(int(hours), int(minutes))

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
