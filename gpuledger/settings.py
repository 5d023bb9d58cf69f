"""One typed settings object per process (STYLE.md 12).

Sources, later ones winning: defaults < ``gpuledger.toml`` (in the working directory, or the
file named by ``GPULEDGER_CONFIG``) < ``GPULEDGER_*`` environment variables (nested with
``__``, e.g. ``GPULEDGER_COLLECTOR__INTERVAL_S=30``) < command-line options. The environment
is read here and nowhere else. ``GPULEDGER_KAFKA_BOOTSTRAP`` is accepted as the documented
short form of ``GPULEDGER_KAFKA__BOOTSTRAP``. Secrets are ``SecretStr``: they print as ``**********``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from storage.errors import GpuledgerError
from streams.bus import QUARANTINE_TOPIC, USAGE_TOPIC


class SettingsError(GpuledgerError):
    """The configuration is invalid; the message lists every problem."""


class KafkaSettings(BaseModel):
    bootstrap: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    usage_topic: str = USAGE_TOPIC
    quarantine_topic: str = QUARANTINE_TOPIC
    partitions: int = Field(default=12, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=60_000)
    consumer_group: str = "gpuledger-consumer"
    linger_ms: int = Field(default=20, ge=0)
    # The longest one batch step (write + commit) may take before the group evicts the member
    # and moves its partitions (Kafka's max.poll.interval.ms). The worst step measured is a
    # few seconds (docs/BENCHMARKS.md); 10 min leaves room for slow storage, and a stuck
    # member is still evicted. Kafka's own default is 5 min.
    max_poll_interval_ms: int = Field(default=600_000, ge=10_000)

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"{self.security_protocol} needs {', '.join(missing)}")
        return self


class StaticOwner(BaseModel):
    """Fallback owner of every GPU on a node when no job is found on it."""

    entity: str
    project: str = "unattributed"


class CollectorSettings(BaseModel):
    site: str = "local"
    node: str = Field(default_factory=socket.gethostname)
    sample_period_s: float = Field(default=10.0, gt=0)
    interval_s: int = Field(default=60, gt=0)
    proc_root: Path = Path("/proc")
    spool_dir: Path | None = None  # default: <data-dir>/spool
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    nvml_timeout_s: float = Field(default=5.0, gt=0)
    static_owner: StaticOwner | None = None
    job_projects: dict[str, str] = Field(default_factory=dict)  # "slurm:123" -> project
    namespace_projects: dict[str, str] = Field(default_factory=dict)  # Kubernetes namespace -> project

    @model_validator(mode="after")
    def _aligned(self) -> CollectorSettings:
        problems = []
        if 3600 % self.interval_s:
            problems.append(f"interval_s={self.interval_s} must divide 3600")
        if self.sample_period_s > self.interval_s:
            problems.append("sample_period_s must not exceed interval_s")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ConsumerSettings(BaseModel):
    max_batch_records: int = Field(default=50_000, ge=1)
    poll_timeout_s: float = Field(default=0.5, gt=0)
    idle_polls: int = Field(default=2, ge=1)  # --until-idle: empty polls in a row before exit
    # where `consume` writes its progress for `gpuledger health` (default <data-dir>/consumer.heartbeat.json;
    # one per process: consumers sharing a data dir each need their own)
    heartbeat_file: Path | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus /metrics; None: not served


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GPULEDGER_",
        env_nested_delimiter="__",
        toml_file="gpuledger.toml",
        extra="forbid",
    )

    data_dir: Path = Path("gpuledger-data")
    registry: Path = Path("examples/registry.toml")
    bus: Literal["local", "kafka"] = "local"
    kafka: KafkaSettings = KafkaSettings()
    collector: CollectorSettings = CollectorSettings()
    consumer: ConsumerSettings = ConsumerSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("GPULEDGER_CONFIG", "gpuledger.toml")
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )

    @property
    def spool_dir(self) -> Path:
        return self.collector.spool_dir or self.data_dir / "spool"

    @property
    def heartbeat_file(self) -> Path:
        return self.consumer.heartbeat_file or self.data_dir / "consumer.heartbeat.json"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; ``overrides`` are command-line values (``None`` means not given).

    Raises :class:`SettingsError` naming every invalid field at once.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    short_bootstrap = os.environ.get("GPULEDGER_KAFKA_BOOTSTRAP")
    try:
        settings = Settings(**given)
        if short_bootstrap and "GPULEDGER_KAFKA__BOOTSTRAP" not in os.environ:
            kafka = settings.kafka.model_copy(update={"bootstrap": short_bootstrap})
            settings = settings.model_copy(update={"kafka": kafka})
        return settings
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings ({exc.error_count()} problems): {problems}") from exc
