"""Integration of device samples into per-interval usage events (schema v1).

Each sample stands for ``sample_period_s`` seconds of its device. Over one aligned interval
``[start, start + interval_s)``:

* ``gpu_seconds`` = min(samples × sample_period_s, interval_s) × gpu_fraction — seconds the
  device was seen, as its share of the physical GPU;
* ``busy_gpu_seconds`` = Σ utilisation/100 × sample_period_s × gpu_fraction, capped at
  ``gpu_seconds``;
* ``energy_joules`` = the physical GPU's total-energy counter deltas of the samples in the
  interval (a delta is counted in the interval of the later reading), × gpu_fraction for a
  MIG instance; a counter that goes down (driver reload) contributes nothing for that step and
  flags ``counter_reset`` — never a negative delta;
* ``samples``/``expected_samples`` and ``partial_interval`` when fewer samples came than the
  period implies (a silent node simply yields no event: nothing is zero-filled);
* the owner is the one seen in most samples (ties broken by name); per-sample flags carry over.

Invariant 2 (docs/architecture.md): a device's ``gpu_seconds`` never exceeds the interval × its fraction,
so the MIG instances of one GPU sum to at most the interval.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from collectors.device import Attributor, DeviceInfo, DeviceSample
from streams.schema import Flag, UsageEvent, format_timestamp, make_event_id


@dataclasses.dataclass(slots=True)
class _Open:
    """A device's interval being accumulated."""

    device: DeviceInfo
    start_s: int
    samples: int = 0
    busy_seconds: float = 0.0
    owners: Counter = dataclasses.field(default_factory=Counter)
    flags: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(slots=True)
class _Energy:
    """A physical GPU's energy counter state."""

    last_mj: int | None = None
    last_ts: float | None = None
    by_interval_mj: dict[int, int] = dataclasses.field(default_factory=dict)
    reset_intervals: set[int] = dataclasses.field(default_factory=set)


class IntervalIntegrator:
    """Accumulates samples of one node and emits events as intervals close."""

    def __init__(
        self,
        site: str,
        node: str,
        interval_s: int,
        sample_period_s: float,
        attributor: Attributor,
    ):
        if interval_s <= 0 or 3600 % interval_s:
            raise ValueError(f"interval_s={interval_s} must divide 3600")
        self.site, self.node = site, node
        self.interval_s = interval_s
        self.sample_period_s = sample_period_s
        self.expected_samples = max(1, round(interval_s / sample_period_s))
        self._attributor = attributor
        self._open: dict[str, _Open] = {}
        self._energy: dict[str, _Energy] = {}
        self._pending_events: list[UsageEvent] = []

    def _interval_of(self, timestamp_s: float) -> int:
        return int(timestamp_s // self.interval_s) * self.interval_s

    def add(self, samples: Sequence[DeviceSample]) -> list[UsageEvent]:
        """Take one round of samples; returns events of every interval that ended before them."""
        if not samples:
            return []
        current = self._interval_of(min(s.timestamp_s for s in samples))
        events = self._close_before(current)
        for sample in samples:
            self._take(sample)
        return events

    def advance(self, timestamp_s: float) -> list[UsageEvent]:
        """Close every interval that ended before ``timestamp_s`` (no samples came: a quiet tick)."""
        return self._close_before(self._interval_of(timestamp_s))

    def flush(self) -> list[UsageEvent]:
        """Close every open interval now (graceful stop): they are partial if cut short."""
        return self._close_before(None)

    def _take(self, sample: DeviceSample) -> None:
        device = sample.device
        start = self._interval_of(sample.timestamp_s)
        state = self._open.get(device.device_uuid)
        if state is None or state.start_s != start:
            if state is not None:  # a sample of a later interval than the round: close it first
                self._pending_events.append(self._event(state))
            state = self._open[device.device_uuid] = _Open(device, start)
        state.flags.update(sample.flags)
        if Flag.GPU_LOST in sample.flags:
            return  # the device did not answer: not present for this sample
        state.samples += 1
        if sample.utilisation_percent is not None:
            share = min(max(sample.utilisation_percent, 0.0), 100.0) / 100.0
            state.busy_seconds += share * self.sample_period_s * device.gpu_fraction
        owner = self._attributor.owner(sample)
        state.owners[(owner.entity, owner.project, owner.job_id)] += 1
        state.flags.update(owner.flags)
        if sample.energy_millijoules is not None:
            self._take_energy(device.gpu_uuid, sample.timestamp_s, sample.energy_millijoules, start)

    def _take_energy(self, gpu_uuid: str, timestamp_s: float, counter_mj: int, start: int) -> None:
        energy = self._energy.setdefault(gpu_uuid, _Energy())
        if energy.last_ts == timestamp_s:
            return  # another MIG instance of the same GPU: one reading per GPU per round
        if energy.last_mj is not None:
            delta = counter_mj - energy.last_mj
            if delta < 0:
                energy.reset_intervals.add(start)
                delta = 0
            energy.by_interval_mj[start] = energy.by_interval_mj.get(start, 0) + delta
        else:
            energy.by_interval_mj.setdefault(start, 0)
        energy.last_mj, energy.last_ts = counter_mj, timestamp_s

    def _close_before(self, start: int | None) -> list[UsageEvent]:
        events, self._pending_events = self._pending_events, []
        if start is not None and all(state.start_s >= start for state in self._open.values()):
            return events
        for uuid in sorted(self._open):
            state = self._open[uuid]
            if start is None or state.start_s < start:
                events.append(self._event(state))
                del self._open[uuid]
        for energy in self._energy.values():  # closed intervals' energy is no longer needed
            for key in [k for k in energy.by_interval_mj if start is None or k < start]:
                del energy.by_interval_mj[key]
                energy.reset_intervals.discard(key)
        return events

    def _event(self, state: _Open) -> UsageEvent:
        device = state.device
        interval_start = format_timestamp(datetime.fromtimestamp(state.start_s, UTC))
        interval_end = format_timestamp(datetime.fromtimestamp(state.start_s + self.interval_s, UTC))
        present_s = min(state.samples * self.sample_period_s, float(self.interval_s))
        gpu_seconds = round(present_s * device.gpu_fraction, 6)
        busy = round(min(state.busy_seconds, gpu_seconds), 6)
        flags = set(state.flags)
        samples = min(state.samples, self.expected_samples)
        if samples < self.expected_samples:
            flags.add(Flag.PARTIAL_INTERVAL)
        energy_joules = None
        energy = self._energy.get(device.gpu_uuid)
        if energy is not None and state.start_s in energy.by_interval_mj:
            energy_joules = round(energy.by_interval_mj[state.start_s] / 1000.0 * device.gpu_fraction, 3)
            if state.start_s in energy.reset_intervals:
                flags.add(Flag.COUNTER_RESET)
        if state.owners:
            (entity, project, job_id), _ = sorted(state.owners.items(), key=lambda kv: (-kv[1], str(kv[0])))[0]
        else:
            entity, project, job_id = self._attributor_fallback(state)
        return UsageEvent(
            event_id=make_event_id(self.node, device.device_uuid, interval_start),
            site=self.site,
            node=self.node,
            gpu_uuid=device.gpu_uuid,
            device_uuid=device.device_uuid,
            gpu_model=device.gpu_model,
            mig_profile=device.mig_profile,
            gpu_fraction=device.gpu_fraction,
            entity=entity,
            project=project,
            job_id=job_id,
            interval_start=interval_start,
            interval_end=interval_end,
            gpu_seconds=gpu_seconds,
            busy_gpu_seconds=busy,
            energy_joules=energy_joules,
            samples=samples,
            expected_samples=self.expected_samples,
            flags=tuple(sorted(flags)),
        )

    # -- checkpoint across a restart -----------------------------------------------------------
    def snapshot(self) -> dict:
        """The open interval as plain JSON-able data, to resume it after a restart.

        Emitting a partial event on stop and the rest after a restart inside the same interval
        would give two events with one ``event_id``; dedupe would keep the first and lose the
        rest. Resuming the accumulator instead yields one complete event.
        """
        return {
            "site": self.site,
            "node": self.node,
            "interval_s": self.interval_s,
            "sample_period_s": self.sample_period_s,
            "open": [
                {
                    "device": dataclasses.asdict(state.device),
                    "start_s": state.start_s,
                    "samples": state.samples,
                    "busy_seconds": state.busy_seconds,
                    "owners": [[*key, count] for key, count in state.owners.items()],
                    "flags": sorted(state.flags),
                }
                for state in self._open.values()
            ],
            "energy": {
                gpu: {
                    "last_mj": e.last_mj,
                    "last_ts": e.last_ts,
                    "by_interval_mj": {str(k): v for k, v in e.by_interval_mj.items()},
                    "reset_intervals": sorted(e.reset_intervals),
                }
                for gpu, e in self._energy.items()
            },
        }

    def restore(self, snapshot: dict) -> list[UsageEvent]:
        """Resume a snapshot; returns events at once if it was taken with other settings."""
        if (snapshot["node"], snapshot["interval_s"], snapshot["sample_period_s"]) != (
            self.node,
            self.interval_s,
            self.sample_period_s,
        ):
            other = IntervalIntegrator(
                snapshot["site"], snapshot["node"], snapshot["interval_s"], snapshot["sample_period_s"], self._attributor
            )
            return other.restore(snapshot) + other.flush()
        for item in snapshot["open"]:
            state = _Open(DeviceInfo(**item["device"]), item["start_s"], item["samples"], item["busy_seconds"])
            state.owners.update({(e, p, j): n for e, p, j, n in item["owners"]})
            state.flags.update(item["flags"])
            self._open[state.device.device_uuid] = state
        for gpu, e in snapshot["energy"].items():
            self._energy[gpu] = _Energy(
                e["last_mj"],
                e["last_ts"],
                {int(k): v for k, v in e["by_interval_mj"].items()},
                set(e["reset_intervals"]),
            )
        return []

    def _attributor_fallback(self, state: _Open) -> tuple[str, str, str | None]:
        """Owner of a device with no present sample in the interval (lost all along)."""
        owner = self._attributor.owner(DeviceSample(device=state.device, timestamp_s=float(state.start_s)))
        return owner.entity, owner.project, owner.job_id
