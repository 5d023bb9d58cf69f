"""One typed settings object per process (STYLE.md 12).

Sources, later ones winning: defaults < ``gpuledger.toml`` (in the working directory, or the
file named by ``GPULEDGER_CONFIG``) < ``GPULEDGER_*`` environment variables (nested with
``__``, e.g. ``GPULEDGER_COLLECTOR__INTERVAL_S=30``) < command-line options. The environment
is read here and nowhere else. ``GPULEDGER_KAFKA_BOOTSTRAP`` is accepted as the documented
short form of ``GPULEDGER_KAFKA__BOOTSTRAP``. Secrets are ``SecretStr``: they print as ``**********``.

No trap is silent: a ``GPULEDGER_CONFIG`` that names a missing file is an error (an empty
``GPULEDGER_CONFIG=`` means "no file at all"), and an unknown key anywhere, top level or
inside a section (``intervall_s = 30``), is an error naming every such key at once. A
registry is never a silent default: a command that prices, attributes or validates asks
:meth:`Settings.registry_file`, which refuses with one line when no registry was given (option,
``registry =`` in gpuledger.toml, or ``GPULEDGER_REGISTRY``). Only ``gpuledger demo`` and
``collect --simulate`` fall back to the sample shipped inside the package (:func:`packaged_example`).
"""

from __future__ import annotations

import os
import socket
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from storage.errors import GpuledgerError
from storage.location import Location
from streams.bus import DEFAULT_MAX_BATCH_BYTES, QUARANTINE_TOPIC, USAGE_TOPIC


class SettingsError(GpuledgerError):
    """The configuration is invalid; the message lists every problem."""


class _Section(BaseModel):
    """A ``[section]`` of gpuledger.toml: a misspelt key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
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
    # How long the group waits for a member that stopped answering (killed, frozen, paused by
    # a GC or a VM stall) before it hands the member's partitions on (Kafka's
    # session.timeout.ms). Shorter: faster take-over; longer: fewer needless rebalances. The
    # broker refuses values outside its group.min/max.session.timeout.ms (6 s to 30 min).
    session_timeout_ms: int = Field(default=10_000, ge=1_000, le=1_800_000)

    @model_validator(mode="after")
    def _session_within_poll_interval(self) -> KafkaSettings:
        if self.session_timeout_ms > self.max_poll_interval_ms:
            raise ValueError(
                f"session_timeout_ms={self.session_timeout_ms} must not exceed max_poll_interval_ms={self.max_poll_interval_ms}"
            )
        return self

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


class StaticOwner(_Section):
    """Fallback owner of every GPU on a node when no job is found on it."""

    entity: str
    project: str = "unattributed"


class CollectorSettings(_Section):
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


class ConsumerSettings(_Section):
    max_batch_records: int = Field(default=50_000, ge=1)
    # a batch also stops once its messages hold this many bytes (default 8 MiB): the batch step's
    # memory is a multiple of it, so it sets the consumer's peak RSS; 16 MiB is the most that was
    # measured under 1 GiB (docs/BENCHMARKS.md, "Cost per event against peers", item 3)
    max_batch_bytes: int = Field(default=DEFAULT_MAX_BATCH_BYTES, ge=1024 * 1024, le=16 * 1024 * 1024)
    poll_timeout_s: float = Field(default=0.5, gt=0)
    idle_polls: int = Field(default=2, ge=1)  # --until-idle: empty polls in a row before exit
    # event-time hours of ids the dedupe holds in memory (24 bytes per id); re-sends of older
    # hours are checked against storage, which costs CPU when many arrive late
    dedupe_window_hours: int = Field(default=2, ge=1, le=48)
    # an hour of that window stays exact until the newest event is this many minutes past the
    # hour's end, then is held as a filter of `dedupe_filter_bits_per_id` bits an id (12 = 1.5 B,
    # ~0.5 % false positives, each answered by storage: never a verdict)
    dedupe_filter_after_minutes: int = Field(default=10, ge=0, le=48 * 60)
    dedupe_filter_bits_per_id: int = Field(default=12, ge=4, le=32)
    # where `consume` writes its progress for `gpuledger health` (default <data-dir>/consumer.heartbeat.json;
    # one per process: consumers sharing a data dir each need their own)
    heartbeat_file: Path | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus /metrics; None: not served


class StorageSettings(_Section):
    """Object storage for an ``s3://bucket/prefix`` data directory. Each one left unset comes
    from the standard variable every S3 tool reads (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None

    def s3_options(self) -> dict[str, str]:
        secret = self.secret_access_key.get_secret_value() if self.secret_access_key else None
        given = {
            "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": secret,
        }
        return {k: v for k, v in given.items() if v}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GPULEDGER_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Path("gpuledger-data")
    registry: Path | None = None  # no default: see registry_file()
    bus: Literal["local", "kafka"] = "local"
    kafka: KafkaSettings = KafkaSettings()
    collector: CollectorSettings = CollectorSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    storage: StorageSettings = StorageSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = config_file()
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if toml_path is None:
            return sources
        return (*sources, TomlConfigSettingsSource(settings_cls, toml_file=toml_path))

    def registry_file(self) -> Path:
        """The registry to price, attribute and validate with; raises when none was given.

        A ledger host that silently used the sample registry shipped in the package would
        price with sample rates and quarantine every real project (issue 17).
        """
        if self.registry is None:
            raise SettingsError(NO_REGISTRY)
        return self.registry

    @property
    def spool_dir(self) -> Path:
        return self.collector.spool_dir or self.local_data_dir("the collector's spool (set collector.spool_dir)") / "spool"

    def local_data_dir(self, what: str) -> Path:
        """The data dir as a local path, for ``what`` lives only on this machine's disk (the
        embedded bus, the spool, the demo). An ``s3://`` data dir is refused in one line:
        ``Path("s3://b/p")`` would be the relative directory ``s3:/b/p`` (STYLE 17)."""
        location = self.data_location
        if location.is_s3:
            raise SettingsError(
                f"{what} lives on this machine's disk and cannot use the data dir {location}: give a local "
                "--data-dir, or use --bus kafka (GPULEDGER_KAFKA_BOOTSTRAP) with the data dir on S3"
            )
        return location.local_path()

    @property
    def data_location(self) -> Location:
        """The data dir as a value (STYLE 17): ``Path("s3://b/p")`` is the relative ``s3:/b/p``."""
        return Location.parse(self.data_dir)

    @property
    def heartbeat_file(self) -> Location:
        """Where ``consume`` writes its heartbeat (and ``health`` reads it): the setting, else
        beside the data — ``<data-dir>/consumer.heartbeat.json`` on a local disk, and on S3,
        where consumers on several machines share one data dir, one per host:
        ``<data-dir>/heartbeats/<host>.json`` (``health`` runs on the consumer's host)."""
        if self.consumer.heartbeat_file is not None:
            return Location.parse(self.consumer.heartbeat_file)
        if self.data_location.is_s3:
            return self.data_location.join("heartbeats", f"{socket.gethostname()}.json")
        return self.data_location.join("consumer.heartbeat.json")


DEFAULT_CONFIG = Path("gpuledger.toml")
NO_REGISTRY = (
    "no registry given: pass --registry FILE, set registry = \"/etc/gpuledger/registry.toml\" in gpuledger.toml, "
    "or GPULEDGER_REGISTRY=FILE (only `gpuledger demo` uses the sample registry)"
)


def config_file() -> Path | None:
    """The settings file to read, or ``None`` for none.

    ``GPULEDGER_CONFIG`` unset: ``./gpuledger.toml`` when it exists. Set to a path: that file,
    which must exist (a typo there would otherwise leave every setting at its default, the
    bus ``local`` among them). Set to the empty string: no file.
    """
    named = os.environ.get("GPULEDGER_CONFIG")
    if named is None:
        return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    if not named:
        return None
    path = Path(named)
    if not path.is_file():
        raise SettingsError(
            f"GPULEDGER_CONFIG names {path}, which does not exist: create it (see examples/gpuledger.toml) "
            "or unset GPULEDGER_CONFIG (GPULEDGER_CONFIG= with no value reads no file)"
        )
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: not readable TOML ({exc}); fix the file") from exc
    return path


def packaged_example(name: str) -> Path:
    """A file of ``examples/`` as shipped inside the installed package (``gpuledger/examples``)."""
    return Path(str(resources.files("gpuledger") / "examples" / name))


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
        errors = exc.errors()
        unknown = [".".join(str(p) for p in err["loc"]) for err in errors if err["type"] == "extra_forbidden"]
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in errors
            if err["type"] != "extra_forbidden"
        ]
        if unknown:
            problems.insert(0, f"unknown key(s) {', '.join(unknown)} (misspelt? see examples/gpuledger.toml)")
        source = config_file()
        where = f" (file {source}, GPULEDGER_* variables, options)" if source else ""
        raise SettingsError(f"invalid settings{where}, {len(problems)} problem(s): {'; '.join(problems)}") from exc
