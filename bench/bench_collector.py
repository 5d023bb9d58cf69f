"""Collector cost per GPU per sample, over the fake NVML underneath the real pynvml.

Two measurements, each against a peer baseline run in the same invocation:

1. **Steady state at 1 Hz** (the goal: an 8-GPU node under 0.5 % of one core and 60 MiB):
   ``gpuledger collect --simulate --sample-period 1`` runs as a child process next to a
   baseline child that makes the same pynvml calls at 1 Hz in a bare loop (no worker thread,
   no attribution, no integration, no spool, no metrics). After a warm-up the parent reads
   each child's CPU time (utime + stime from ``/proc/<pid>/stat``) at the start and the end of
   a window, and its resident memory (``VmRSS``/``VmHWM`` from ``/proc/<pid>/status``).
2. **Per-round cost** in one process: ``time.process_time`` over many back-to-back rounds of
   the collector's work (``NvmlReader.sample`` + attribution + ``IntervalIntegrator.add``)
   against the bare pynvml loop, interleaved A/B/A/B, median of the repeats.

Both sides talk to the same fake library, so the fake's own cost is in both; what the
collector adds is the difference. A real driver's calls cost more than the fake's, and the
same for both sides. Run: ``.venv/bin/python bench/bench_collector.py [--window 120]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _bare_calls(pynvml, handles) -> int:
    """The pynvml calls the reader makes for a whole GPU, with nothing around them."""
    n = 0
    for h in handles:
        pynvml.nvmlDeviceGetPowerUsage(h)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        pynvml.nvmlDeviceGetUtilizationRates(h)
        pynvml.nvmlDeviceGetMemoryInfo(h)
        n += len(pynvml.nvmlDeviceGetComputeRunningProcesses(h))
    return n


def child_baseline() -> None:
    """A bare 1 Hz loop of the same pynvml calls (the peer baseline)."""
    import pynvml

    from collectors.fakenvml import installed, scenarios

    stop = False

    def handler(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    scenario = scenarios.normal_node("bench")
    scenario.clock = time.time
    with installed(scenario):
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        while not stop:
            _bare_calls(pynvml, handles)
            time.sleep(1.0 - time.time() % 1.0)
        pynvml.nvmlShutdown()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def steady_state(window_s: float, warmup_s: float) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GPULEDGER_CONFIG="")
        options = ["--simulate", "--sample-period", "1", "--interval", "60", "--metrics-port", "0",
                   "--registry", str(ROOT / "examples/registry.toml"), "--log-level", "warning"]

        def spawn(argv: list[str]) -> subprocess.Popen:
            return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        children = {
            # the lean entry point the systemd unit and the container use
            "collector": spawn([sys.executable, "-m", "gpuledger.cli_collect", *options,
                                "--data-dir", str(Path(tmp) / "a"), "--node", "bench-a"]),
            # the same command through the full CLI (imports every command's dependencies)
            "collector_full_cli": spawn([str(ROOT / ".venv/bin/gpuledger"), "collect", *options,
                                         "--data-dir", str(Path(tmp) / "b"), "--node", "bench-b"]),
            "baseline": spawn([sys.executable, __file__, "--child-baseline"]),
        }
        try:
            time.sleep(warmup_s)
            start = {name: _cpu_s(p.pid) for name, p in children.items()}
            began = time.monotonic()
            time.sleep(window_s)
            elapsed = time.monotonic() - began
            end = {name: _cpu_s(p.pid) for name, p in children.items()}
            memory = {name: _memory_kib(p.pid) for name, p in children.items()}
        finally:
            for p in children.values():
                p.send_signal(signal.SIGTERM)
            for p in children.values():
                p.wait(30)
    return {
        name: {
            "cpu_percent": 100.0 * (end[name] - start[name]) / elapsed,
            "rss_mib": memory[name]["VmRSS"] / 1024,
            "hwm_mib": memory[name]["VmHWM"] / 1024,
        }
        for name in children
    }


def per_round(rounds: int, repeats: int) -> dict[str, float]:
    import pynvml

    from collectors.attribution import ProcAttributor
    from collectors.fakenvml import installed, scenarios
    from collectors.integrate import IntervalIntegrator
    from collectors.nvml import NvmlReader
    from gpuledger.settings import StaticOwner

    scenario = scenarios.jobs_node("bench")  # 4 GPUs with Slurm/K8s processes from the fixture
    scenario.gpus.extend(scenarios.normal_node("bench", count=8).gpus[4:])  # 8 GPUs in all
    attributor = ProcAttributor(ROOT / "tests/fixtures/proc", StaticOwner(entity="gov", project="unattributed"),
                                {"snu-llm": "gov", "kaist-vision": "gov"})
    integrator = IntervalIntegrator("dc", "bench", 60, 1.0, attributor)
    collector_s, bare_s = [], []
    with installed(scenario), NvmlReader() as reader:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(8)]
        t = 1_800_000_000.0
        for _ in range(repeats):
            began = time.process_time()
            for _ in range(rounds):
                integrator.add(reader.sample(t))
                t += 1.0
            collector_s.append((time.process_time() - began) / rounds)
            began = time.process_time()
            for _ in range(rounds):
                _bare_calls(pynvml, handles)
            bare_s.append((time.process_time() - began) / rounds)
    c, b = statistics.median(collector_s), statistics.median(bare_s)
    return {"collector_us_per_gpu": c / 8 * 1e6, "bare_us_per_gpu": b / 8 * 1e6,
            "collector_round_ms": c * 1e3, "bare_round_ms": b * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=120.0, help="steady-state window, seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the window starts")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_baseline:
        child_baseline()
        return
    sys.path.insert(0, str(ROOT))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    r = per_round(args.rounds, args.repeats)
    print(f"per round, 8 GPUs ({args.rounds} rounds x {args.repeats}, median): collector "
          f"{r['collector_round_ms']:.3f} ms CPU = {r['collector_us_per_gpu']:.0f} us/GPU; bare pynvml loop "
          f"{r['bare_round_ms']:.3f} ms = {r['bare_us_per_gpu']:.0f} us/GPU; ratio "
          f"{r['collector_round_ms'] / r['bare_round_ms']:.2f}x")
    s = steady_state(args.window, args.warmup)
    for name, v in s.items():
        print(f"1 Hz steady state, {name}: {v['cpu_percent']:.3f} % of one core over {args.window:.0f} s, "
              f"RSS {v['rss_mib']:.1f} MiB (peak {v['hwm_mib']:.1f} MiB)")
    print(f"collector / baseline: CPU {s['collector']['cpu_percent'] / max(s['baseline']['cpu_percent'], 1e-9):.2f}x, "
          f"RSS {s['collector']['rss_mib'] / s['baseline']['rss_mib']:.2f}x")


if __name__ == "__main__":
    main()
