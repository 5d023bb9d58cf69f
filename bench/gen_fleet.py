"""A fleet that looks national: the usage events of N GPUs over a span of time, at full speed.

The programme's mix comes from the registry (``examples/registry.toml`` by default): for the
KST day the span starts on, each entity's allocation of each GPU model (gov, samsung, hyundai
and skt 50,000 new Blackwell each, naver 60,000; about 65,000 existing H100s spread over the
five), scaled down to ``gpus`` by largest remainder. Every node has 8 GPUs of one model and
belongs to one entity; each node runs one project of its entity for the whole span, or no job
(``unattributed``). A share of the GPUs is split into four MIG instances (3 + 2 + 1 + 1 of 7
slices), each of which reports its own event, exactly as the collector does.

One event per device per interval (60 s by default), built column-wise with Polars (no
Python loop per event); ``event_id`` is the contract's SHA-256 of ``node``, ``device_uuid``
and ``interval_start`` joined by U+001F, computed column-wise with the same ``polars-hash``
plugin the consumer checks it with, and equal to ``streams.schema.make_event_id`` (a test
holds this). Every event passes ``streams.validate.check_rules`` against the registry.

Faults, as fractions of the distinct events:

* ``late_fraction``: delivered ``late_minutes`` (a range) after the interval they belong to,
  in a later message than the on-time events of their interval;
* ``duplicate_fraction``: delivered a second time, byte for byte, up to
  ``duplicate_delay_minutes`` later (a retry, a spool replay);
* ``partial_fraction``: fewer samples than expected, ``partial_interval`` flag.

Messages come out keyed by a node group (``fleet-007``): each GPU always lands in the same
group, so on a partitioned bus its events stay in one partition, in order, as the bus contract
asks of the node key. Each message is one ``pyarrow.Table`` of schema v1's wire columns: send
it as one Arrow IPC message (``streams.wire.encode_arrow``) or write it as JSON Lines.

    python -m bench.gen_fleet --help
    python -m bench.gen_fleet --gpus 325000 --minutes 10 --null                 # speed only
    python -m bench.gen_fleet --gpus 2000 --minutes 60 --jsonl events.jsonl      # for `gpuledger ingest`
    python -m bench.gen_fleet --gpus 2000 --minutes 60 --publish --bus kafka     # onto the bus
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import io
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import polars_hash as plh
import pyarrow as pa

from accounting.registry import Registry, load_registry
from streams.schema import EVENT_ID_SEPARATOR, KST, SCHEMA_VERSION, UNATTRIBUTED, Flag, format_timestamp
from streams.wire import ARROW_WIRE_SCHEMA

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REGISTRY = REPO / "examples" / "registry.toml"
NATIONAL_GPUS = 325_000  # 260,000 new Blackwell + 65,000 existing (examples/registry.toml)
GPUS_PER_NODE = 8
MIG_MAX_SLICES = 7
# four MIG instances per split GPU: 3 + 2 + 1 + 1 of 7 slices (profile names per model)
MIG_SLICES = (3, 2, 1, 1)
MIG_PROFILES = {
    "NVIDIA B200": ("3g.90gb", "2g.45gb", "1g.23gb", "1g.23gb"),
    "NVIDIA GB200": ("3g.93gb", "2g.47gb", "1g.23gb", "1g.23gb"),
    "NVIDIA H100 80GB HBM3": ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"),
}
DEFAULT_MIG_PROFILES = ("3g", "2g", "1g", "1g")
IDLE_WATTS = {"NVIDIA B200": 150.0, "NVIDIA GB200": 170.0, "NVIDIA H100 80GB HBM3": 80.0}
PEAK_WATTS = {"NVIDIA B200": 1000.0, "NVIDIA GB200": 1200.0, "NVIDIA H100 80GB HBM3": 700.0}


@dataclasses.dataclass(frozen=True, slots=True)
class FleetOptions:
    """What the generated fleet and its traffic look like. Fractions are of distinct events."""

    gpus: int = NATIONAL_GPUS
    mig_share: float = 0.05  # of the physical GPUs, split into 4 MIG instances each
    unattributed_share: float = 0.05  # of the nodes: no job, project ``unattributed``
    late_fraction: float = 0.001
    late_minutes: tuple[int, int] = (5, 180)  # delay range of a late event
    duplicate_fraction: float = 0.002
    duplicate_delay_minutes: int = 10  # a duplicate comes 0 … this many minutes after the original
    partial_fraction: float = 0.01
    interval_s: int = 60
    sample_period_s: int = 10
    key_groups: int = 64  # message keys; each GPU's events always go under the same key
    max_message_events: int = 20_000
    site_prefix: str = "kr"
    seed: int = 20261101

    def __post_init__(self) -> None:
        problems = []
        for name in ("mig_share", "unattributed_share", "late_fraction", "duplicate_fraction", "partial_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within [0, 1]")
        if self.gpus < 1:
            problems.append("gpus must be at least 1")
        if self.interval_s <= 0 or 3600 % self.interval_s:
            problems.append("interval_s must divide 3600")
        if self.sample_period_s <= 0 or self.interval_s % self.sample_period_s:
            problems.append("sample_period_s must divide interval_s")
        if not 1 <= self.late_minutes[0] <= self.late_minutes[1]:
            problems.append("late_minutes must be a range (lo, hi) with 1 <= lo <= hi")
        if self.key_groups < 1 or self.max_message_events < 1 or self.duplicate_delay_minutes < 0:
            problems.append("key_groups and max_message_events must be positive, duplicate_delay_minutes >= 0")
        if problems:
            raise ValueError("; ".join(problems))


@dataclasses.dataclass(slots=True)
class Counts:
    """What a run emitted, filled in as messages are produced. ``events`` counts every row
    sent; ``distinct`` = ``events`` - ``duplicates`` is what a correct consumer stores."""

    messages: int = 0
    events: int = 0
    distinct: int = 0
    duplicates: int = 0
    late: int = 0
    gpu_microseconds: int = 0  # of the distinct events, for totals checks


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One bus message: its key, its events (schema v1's wire columns), and the simulated
    moment it is sent (the end of the interval whose step sends it; late events and
    duplicates pending after the span are sent at their due moment)."""

    key: str
    events: pa.Table
    sent_at: datetime


def national_mix(registry: Registry, day: date, gpus: int) -> list[tuple[str, str, int]]:
    """``(entity, gpu_model, count)`` for ``gpus`` GPUs in the proportions of the registry's
    allocations on ``day`` (KST), largest remainder, entities and models in sorted order."""
    full = [
        (entity, model, registry.entities[entity].allocated(model, day))
        for entity in sorted(registry.entities)
        for model in sorted(registry.gpu_models())
    ]
    full = [row for row in full if row[2] > 0]
    total = sum(count for _, _, count in full)
    if total == 0:
        raise ValueError(f"the registry {registry.source} allocates no GPUs on {day}")
    exact = [count * gpus / total for _, _, count in full]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(full)), key=lambda i: (counts[i] - exact[i], i))[: gpus - sum(counts)]:
        counts[i] += 1
    return [(entity, model, n) for (entity, model, _), n in zip(full, counts, strict=True) if n]


def fleet(registry: Registry, day: date, options: FleetOptions) -> pl.DataFrame:
    """One row per device (a whole GPU or a MIG instance) with the columns that do not change
    from one interval to the next, plus ``_group`` (its message key number) and ``_watts``."""
    rng = np.random.default_rng(options.seed)
    projects: dict[str, list[str]] = {}
    for name, project in sorted(registry.projects.items()):
        projects.setdefault(project.entity, []).append(name)
    groups = []
    node_base = 0
    for entity, model, count in national_mix(registry, day, options.gpus):
        index = np.arange(count)
        node_local = index // GPUS_PER_NODE
        n_nodes = int(node_local[-1]) + 1
        owned = projects.get(entity, [])
        node_project = np.array(owned or [UNATTRIBUTED], dtype=object)[np.arange(n_nodes) % max(1, len(owned))]
        idle = rng.random(n_nodes) < options.unattributed_share if owned else np.ones(n_nodes, dtype=bool)
        node_project = np.where(idle, UNATTRIBUTED, node_project)
        short = model.removeprefix("NVIDIA ").split(" ")[0].lower()
        groups.append(
            pl.DataFrame(
                {
                    "_node_local": node_local,
                    "_node_global": node_local + node_base,
                    "_gpu_global": index + sum(g.height for g in groups),
                    "project": node_project[node_local].astype(str),
                }
            ).with_columns(entity=pl.lit(entity), gpu_model=pl.lit(model), _short=pl.lit(short))
        )
        node_base += n_nodes
    gpus = pl.concat(groups)
    gpus = gpus.with_columns(
        site=pl.format(f"{options.site_prefix}-{{}}", pl.col("entity")),
        node=pl.format("{}-{}-n{}", pl.col("entity"), pl.col("_short"), pl.col("_node_local").cast(pl.String).str.zfill(5)),
        gpu_uuid=pl.format(
            "GPU-{}-4e1f-8a00-{}",
            pl.lit(f"{options.seed & 0xFFFFFFFF:08x}"),
            pl.col("_gpu_global").cast(pl.String).str.zfill(12),
        ),
        job_id=pl.when(pl.col("project") == UNATTRIBUTED)
        .then(pl.lit(None, dtype=pl.String))
        .otherwise(pl.format("slurm:{}", pl.col("_node_global") + 100_000)),
        _mig=pl.Series(rng.random(gpus.height) < options.mig_share),
        _group=(pl.col("_node_global") % options.key_groups).cast(pl.UInt32),
    )
    whole = gpus.filter(~pl.col("_mig")).with_columns(
        device_uuid=pl.col("gpu_uuid"),
        mig_profile=pl.lit(None, dtype=pl.String),
        gpu_fraction=pl.lit(1.0),
    )
    slots = pl.DataFrame({"_slot": list(range(len(MIG_SLICES))), "_slices": list(MIG_SLICES)})
    mig = gpus.filter(pl.col("_mig")).join(slots, how="cross").with_columns(
        device_uuid=pl.format("MIG-{}-{}", pl.col("gpu_uuid").str.slice(4), pl.col("_slot")),
        mig_profile=_mig_profile(),
        gpu_fraction=pl.col("_slices") / MIG_MAX_SLICES,
    )
    columns = ["site", "node", "gpu_uuid", "device_uuid", "gpu_model", "mig_profile", "gpu_fraction",
               "entity", "project", "job_id", "_group", "_gpu_global"]
    devices = pl.concat([whole.select(columns), mig.select(columns)]).sort("_gpu_global", "device_uuid")
    return devices.with_columns(
        _idle_w=pl.col("gpu_model").replace_strict(IDLE_WATTS, default=100.0, return_dtype=pl.Float64),
        _peak_w=pl.col("gpu_model").replace_strict(PEAK_WATTS, default=700.0, return_dtype=pl.Float64),
    ).drop("_gpu_global")


def _mig_profile() -> pl.Expr:
    expr = pl.lit(None, dtype=pl.String)
    for model, names in MIG_PROFILES.items():
        for slot, name in enumerate(names):
            expr = pl.when((pl.col("gpu_model") == model) & (pl.col("_slot") == slot)).then(pl.lit(name)).otherwise(expr)
    for slot, name in enumerate(DEFAULT_MIG_PROFILES):
        expr = pl.when(expr.is_null() & (pl.col("_slot") == slot)).then(pl.lit(name)).otherwise(expr)
    return expr


def _event_id_key() -> pl.Expr:
    """What the contract hashes into ``event_id``: ``node``, ``device_uuid`` and
    ``interval_start`` joined by U+001F (streams.schema.make_event_id)."""
    return pl.concat_str([pl.col("node"), pl.col("device_uuid"), pl.col("interval_start")], separator=EVENT_ID_SEPARATOR)


def _event_id() -> pl.Expr:
    """The contract's event id, column-wise: the first 32 hex characters of SHA-256 of ``_key``."""
    return plh.col("_key").chash.sha2_256().str.slice(0, 32).alias("event_id")


def interval_events(devices: pl.DataFrame, start: datetime, options: FleetOptions, rng: np.random.Generator) -> pl.DataFrame:
    """Every device's event for the interval starting at ``start`` (aligned, UTC)."""
    n = devices.height
    expected = options.interval_s // options.sample_period_s
    partial = rng.random(n) < options.partial_fraction
    samples = np.where(partial, rng.integers(0, max(1, expected), n), expected)
    utilisation = rng.beta(2.0, 1.2, n)
    interval_start = format_timestamp(start)
    interval_end = format_timestamp(start + timedelta(seconds=options.interval_s))
    frame = devices.with_columns(
        interval_start=pl.lit(interval_start),
        interval_end=pl.lit(interval_end),
        samples=pl.Series(samples, dtype=pl.Int64),
        expected_samples=pl.lit(expected, dtype=pl.Int64),
        _util=pl.Series(utilisation),
        _partial=pl.Series(partial),
    ).with_columns(
        _key=_event_id_key(),
        gpu_seconds=pl.col("samples") * options.sample_period_s * pl.col("gpu_fraction"),
    )
    return frame.with_columns(
        _event_id(),
        schema_version=pl.lit(SCHEMA_VERSION, dtype=pl.Int64),
        busy_gpu_seconds=pl.col("gpu_seconds") * pl.col("_util"),
        energy_joules=pl.col("gpu_seconds") * (pl.col("_idle_w") + (pl.col("_peak_w") - pl.col("_idle_w")) * pl.col("_util")),
        flags=pl.when(pl.col("_partial"))
        .then(pl.lit([str(Flag.PARTIAL_INTERVAL)], dtype=pl.List(pl.String)))
        .otherwise(pl.lit([], dtype=pl.List(pl.String))),
    ).select(*ARROW_WIRE_SCHEMA.names, "_group")


def generate(
    start: datetime,
    minutes: int,
    options: FleetOptions | None = None,
    registry: Registry | str | Path = DEFAULT_REGISTRY,
    counts: Counts | None = None,
) -> Iterator[Message]:
    """The messages of ``minutes`` minutes of the fleet from ``start`` (aligned to the interval).

    Delivery is simulated minute by minute: at each step the on-time events of that interval
    go out, then whatever late events and duplicates fall due; after the last interval the
    ones still pending follow at their due moments. ``counts`` (if given) is filled in as
    messages are yielded.
    """
    options = options or FleetOptions()
    counts = counts if counts is not None else Counts()
    if isinstance(registry, (str, Path)):
        registry = load_registry(registry)
    start = start.astimezone(UTC)
    if int(start.timestamp()) % options.interval_s:
        raise ValueError(f"start {format_timestamp(start)} is not aligned to {options.interval_s} s")
    devices = fleet(registry, (start + KST).date(), options)
    rng = np.random.default_rng(options.seed + 1)
    steps = minutes * 60 // options.interval_s
    step_s = options.interval_s
    pending: list[tuple[int, int, bytes]] = []  # (due step, sequence, frame as Arrow IPC): a heap
    sequence = 0

    def sent_at(step: int) -> datetime:
        return start + timedelta(seconds=(step + 1) * step_s)

    def due(step: int) -> list[pl.DataFrame]:
        out = []
        while pending and pending[0][0] <= step:
            out.append(pl.read_ipc(io.BytesIO(heapq.heappop(pending)[2])))
        return out

    for step in range(steps):
        events = interval_events(devices, start + timedelta(seconds=step * step_s), options, rng)
        counts.distinct += events.height
        counts.gpu_microseconds += int((events["gpu_seconds"] * 1_000_000).round(0, mode="half_to_even").cast(pl.Int64).sum())
        n = events.height
        late = rng.random(n) < options.late_fraction
        late_steps = rng.integers(options.late_minutes[0], options.late_minutes[1] + 1, n) * 60 // step_s
        duplicated = rng.random(n) < options.duplicate_fraction
        # a duplicate is re-sent after its original, late or not
        dup_steps = rng.integers(0, options.duplicate_delay_minutes + 1, n) * 60 // step_s + np.where(late, late_steps, 0)
        counts.late += int(late.sum())
        counts.duplicates += int(duplicated.sum())
        for mask, delays in ((late, late_steps), (duplicated, dup_steps)):
            if not mask.any():
                continue
            delayed = events.filter(pl.Series(mask)).with_columns(_due=pl.Series(delays[mask] + step))
            for (due_step,), part in delayed.partition_by("_due", as_dict=True).items():
                # a filtered frame's strings are views into the whole interval's buffers: held
                # for hours in the heap they pin ~100 MB per million events. Copy them out.
                held = part.drop("_due").write_ipc(None, compat_level=pl.CompatLevel.oldest()).getvalue()
                heapq.heappush(pending, (int(due_step), sequence, held))
                sequence += 1
        on_time = events.filter(~pl.Series(late))
        yield from _messages([on_time, *due(step)], sent_at(step), options, counts)
    while pending:
        step = pending[0][0]
        yield from _messages(due(step), sent_at(step), options, counts)


def _messages(frames: list[pl.DataFrame], sent_at: datetime, options: FleetOptions, counts: Counts) -> Iterator[Message]:
    frames = [f for f in frames if f.height]
    if not frames:
        return
    frame = pl.concat(frames) if len(frames) > 1 else frames[0]
    for (group,), part in sorted(frame.partition_by("_group", as_dict=True).items()):
        for offset in range(0, part.height, options.max_message_events):
            chunk = part.slice(offset, options.max_message_events).drop("_group")
            table = chunk.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(ARROW_WIRE_SCHEMA)
            counts.messages += 1
            counts.events += table.num_rows
            yield Message(f"fleet-{group:03d}", table, sent_at)


def to_json_lines(table: pa.Table) -> bytes:
    """The events of a message as JSON Lines (the contract's wire form), fields in order."""
    buffer = io.BytesIO()
    pl.from_arrow(table).write_ndjson(buffer)
    return buffer.getvalue()


def _parse_start(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gen_fleet",
        description="Generate the usage events of a national-looking GPU fleet (see the module docstring).",
    )
    defaults = FleetOptions()
    parser.add_argument("--gpus", type=int, default=defaults.gpus, help=f"physical GPUs (default {defaults.gpus:,}: the whole programme)")
    parser.add_argument("--start", type=_parse_start, default=datetime(2026, 11, 2, tzinfo=UTC), help="first interval, RFC 3339 UTC (default 2026-11-02T00:00:00Z)")
    parser.add_argument("--minutes", type=int, default=10, help="span in minutes (default 10)")
    parser.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, help="registry.toml the mix and projects come from")
    parser.add_argument("--mig-share", type=float, default=defaults.mig_share, help="share of GPUs split into 4 MIG instances")
    parser.add_argument("--late", type=float, default=defaults.late_fraction, help="fraction of events delivered late")
    parser.add_argument("--late-minutes", type=int, nargs=2, default=defaults.late_minutes, metavar=("LO", "HI"), help="delay range of a late event")
    parser.add_argument("--duplicates", type=float, default=defaults.duplicate_fraction, help="fraction of events delivered twice")
    parser.add_argument("--partial", type=float, default=defaults.partial_fraction, help="fraction of partial intervals")
    parser.add_argument("--key-groups", type=int, default=defaults.key_groups, help="message keys (node groups)")
    parser.add_argument("--max-message-events", type=int, default=defaults.max_message_events, help="events per message at most")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--jsonl", type=Path, help="write JSON Lines here ('-' for stdout), for `gpuledger ingest`")
    out.add_argument("--arrow-dir", type=Path, help="write one Arrow IPC stream file per message here")
    out.add_argument("--publish", action="store_true", help="send Arrow IPC messages to the usage topic of the configured bus")
    out.add_argument("--null", action="store_true", help="generate and discard: measures generation speed")
    parser.add_argument("--bus", choices=("local", "kafka"), default=None, help="with --publish: the bus (default: settings)")
    parser.add_argument("--data-dir", type=Path, default=None, help="with --publish --bus local: the data directory")
    args = parser.parse_args(argv)

    options = FleetOptions(
        gpus=args.gpus, mig_share=args.mig_share, late_fraction=args.late, late_minutes=tuple(args.late_minutes),
        duplicate_fraction=args.duplicates, partial_fraction=args.partial, key_groups=args.key_groups,
        max_message_events=args.max_message_events, seed=args.seed,
    )
    counts = Counts()
    messages = generate(args.start, args.minutes, options, args.registry, counts)
    started = time.perf_counter()
    if args.null:
        for _ in messages:
            pass
    elif args.jsonl is not None:
        sink = sys.stdout.buffer if str(args.jsonl) == "-" else args.jsonl.open("wb")
        try:
            for message in messages:
                sink.write(to_json_lines(message.events))
        finally:
            if sink is not sys.stdout.buffer:
                sink.close()
    elif args.arrow_dir is not None:
        from streams.wire import encode_arrow

        args.arrow_dir.mkdir(parents=True, exist_ok=True)
        for number, message in enumerate(messages):
            (args.arrow_dir / f"{number:07d}-{message.key}.arrows").write_bytes(encode_arrow(message.events))
    else:
        from gpuledger.settings import load_settings
        from gpuledger.wiring import make_bus
        from streams.wire import encode_arrow

        settings = load_settings(bus=args.bus, data_dir=args.data_dir)
        producer = make_bus(settings).producer(settings.kafka.usage_topic)
        try:
            for message in messages:
                producer.send(message.key, encode_arrow(message.events))
            producer.flush()
        finally:
            producer.close()
    elapsed = time.perf_counter() - started
    print(
        f"{counts.events:,} events in {counts.messages:,} messages ({counts.distinct:,} distinct, "
        f"{counts.duplicates:,} duplicates, {counts.late:,} late) in {elapsed:.1f} s: "
        f"{counts.events / max(elapsed, 1e-9):,.0f} events/s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
