"""One typed, frozen settings object for every process of vitals.

All configuration comes from environment variables prefixed ``VITALS_`` (or a
``.env`` file named by ``VITALS_ENV_FILE``). Secrets are ``SecretStr`` so they
never appear in logs or reprs. The README's configuration table mirrors this
class; keep both in step.
"""

from __future__ import annotations

import ssl
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: Topic kinds of DESIGN.md: the part of an input topic's name after "<prefix>events.".
INPUT_TOPIC_KINDS: tuple[str, ...] = (
    "login",
    "feature-use",
    "support-ticket",
    "account",
    "engagement",
    "outcome",
)


class Settings(BaseSettings):
    """Runtime configuration. Defaults are the local single-node set-up."""

    model_config = SettingsConfigDict(
        env_prefix="VITALS_", frozen=True, extra="ignore", env_file=None
    )

    # --- Kafka connection -------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated Kafka bootstrap servers."
    )
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: Path | None = Field(None, description="Client private key (mutual TLS).")

    # --- Topology ---------------------------------------------------------
    app_id: str = Field("vitals", description="Consumer group and internal-topic prefix.")
    topic_prefix: str = Field("vitals.", description="Prefix of every vitals topic name.")
    partitions: int = Field(4, ge=1, description="Partitions of topics vitals creates.")
    replication_factor: int = Field(1, ge=1, description="Replicas of topics vitals creates.")

    # --- Input rules --------------------------------------------------------
    max_event_bytes: int = Field(
        1_048_576, ge=1024, description="Larger message values are dead-lettered."
    )
    max_future_ms: int = Field(
        300_000, ge=0, description="How far in the future occurred_at may be."
    )

    # --- Scoring ----------------------------------------------------------
    scorecard_file: Path | None = Field(
        None, description="Scorecard YAML; the built-in default scorecard when unset."
    )
    timer_interval_s: float = Field(
        10.0, gt=0, description="How often the worker checks for a new tick boundary."
    )
    commit_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description=(
            "How often the worker starts a commit: changed account states go to the"
            " changelog (in slices between batches), then the input offsets handled when"
            " it started are committed (a restart re-reads about this much)."
        ),
    )
    clock_idle_s: float = Field(
        2.0,
        ge=0,
        description=(
            "A fully read topic-partition stops holding back event-time order (and the"
            " rescoring clock) after this long without input."
        ),
    )
    buffer_max_events: int = Field(
        20_000,
        ge=100,
        le=10_000_000,
        description=(
            "Events a partition's reorder buffer may hold before the worker stops fetching"
            " the input topic-partitions that are ahead of the others (it resumes below"
            " half): bounds memory during a catch-up."
        ),
    )
    live_states: int = Field(
        20_000,
        ge=0,
        le=100_000_000,
        description=(
            "Account states a worker holds as live objects (about 34 KB each when busy),"
            " the most recently used; every other account it owns is held as its changelog"
            " bytes (1.5-3 KB) and decoded when next used. 0: every state live."
        ),
    )
    live_skew_ms: int = Field(
        100,
        ge=0,
        le=60_000,
        description=(
            "Live events (occurred_at within the last minute): how long a fully read"
            " topic-partition that was active recently holds back newer events of other"
            " topics, waiting for an older event of its own (cross-topic producer skew)."
        ),
    )

    # --- Playbooks ----------------------------------------------------------
    playbooks_file: Path | None = Field(
        None, description="Playbooks YAML; the built-in defaults when unset."
    )
    webhook_url: str | None = Field(None, description="POST every playbook trigger here.")
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_max_attempts: int = Field(5, ge=1)

    # --- History (SQL) -------------------------------------------------------
    database_url: str = Field(
        "sqlite+aiosqlite:///var/vitals.db", description="SQLAlchemy async URL of the history DB."
    )
    history_daily_snapshot: bool = True

    # --- HTTP API ---------------------------------------------------------
    api_token: SecretStr | None = Field(
        None, description="Bearer token required by POST endpoints (POST is refused when unset)."
    )
    api_read_token_required: bool = Field(
        False, description="Also require the token for GET endpoints (not /healthz, /readyz)."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest accepted request body.")
    red_share_target: float = Field(
        0.05, ge=0, le=1, description="Portfolio target: share of accounts in red."
    )

    # --- Worker -----------------------------------------------------------
    web_bind: str = Field("127.0.0.1", description="Address the HTTP server listens on.")
    web_host: str = Field("127.0.0.1", description="Host name other workers use to reach this one.")
    web_port: int = Field(6066, ge=0, le=65535)
    data_dir: Path = Field(Path("var/worker"), description="Worker-local files.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shutdown_grace_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description=(
            "After SIGINT/SIGTERM the worker finishes what it can (final commit, webhook"
            " deliveries) for at most this long, then exits, logging what it left undone."
        ),
    )
    gc_freeze_interval_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description=(
            "How often the worker moves every object it holds (the account states) out"
            " of the garbage collector's way (gc.freeze); 0: Python's default schedule."
        ),
    )
    gc_full_interval_s: float = Field(
        600.0,
        ge=0,
        description=(
            "How often the worker runs one full garbage collection over everything,"
            " frozen objects included (frees reference cycles that were frozen);"
            " 0: never."
        ),
    )
    gc_young_threshold: int = Field(
        10_000,
        ge=100,
        le=10_000_000,
        description=(
            "Allocations between two young garbage collections while the freeze is on"
            " (Python's default: 700)."
        ),
    )
    worker_processes: int = Field(
        1,
        ge=0,
        le=1024,
        description=(
            "Worker processes `vitals worker` runs on this machine, one consumer of the"
            " group each, on ports VITALS_WEB_PORT and up; 0 or 'auto': one per core."
        ),
    )

    @field_validator("worker_processes", mode="before")
    @classmethod
    def _auto_processes(cls, value: object) -> object:
        # "auto" is the documented spelling of 0 (one per core).
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return 0
            if not text.isdigit():
                raise ValueError(f"must be a number of processes or 'auto', got {value!r}")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may contain only letters, digits, '.', '_' and '-'")
        return value

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Settings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                "VITALS_SASL_USERNAME and VITALS_SASL_PASSWORD are required "
                f"with security_protocol={self.security_protocol}"
            )
        return self

    # --- Derived names ----------------------------------------------------
    def input_topic(self, kind: str) -> str:
        """Name of the input topic of a kind (``login``, ``feature-use``...)."""
        return f"{self.topic_prefix}events.{kind}"

    @cached_property
    def input_topics(self) -> dict[str, str]:
        """Topic name -> topic kind, for every input topic."""
        return {self.input_topic(kind): kind for kind in INPUT_TOPIC_KINDS}

    @property
    def canonical_url(self) -> str:
        """URL other workers use to reach this worker's HTTP server."""
        return f"http://{self.web_host}:{self.web_port}"

    @cached_property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}events.dlq"

    @cached_property
    def scores_topic(self) -> str:
        return f"{self.topic_prefix}health.scores"

    @cached_property
    def bucket_changes_topic(self) -> str:
        return f"{self.topic_prefix}health.bucket-changes"

    @cached_property
    def triggers_topic(self) -> str:
        return f"{self.topic_prefix}playbooks.triggers"

    @cached_property
    def changelog_topic(self) -> str:
        """Internal: the account-state table's changelog (named the way faust names it)."""
        return f"{self.app_id}-accounts-changelog"

    @cached_property
    def repartition_topic(self) -> str:
        """Internal: input events found on the wrong partition, forwarded to the right one."""
        return f"{self.topic_prefix}internal.repartition"

    @cached_property
    def ticks_topic(self) -> str:
        """Internal: timer ticks, co-partitioned with the input topics."""
        return f"{self.topic_prefix}internal.ticks"

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS context for SSL / SASL_SSL, or None for plaintext protocols."""
        if not self.security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(
            purpose=ssl.Purpose.SERVER_AUTH,
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
        )
        if self.ssl_certfile:
            context.load_cert_chain(
                str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
            )
        return context

    def aiokafka_kwargs(self) -> dict[str, object]:
        """Connection keyword arguments for plain aiokafka clients."""
        kwargs: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            assert self.sasl_password is not None  # checked by the validator
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return kwargs


def load_settings(**overrides: object) -> Settings:
    """Read the environment, then apply explicit overrides (used by tests and CLI flags)."""
    return Settings(**overrides)  # type: ignore[arg-type]
