"""The ledger host as docs/operators.md sets it up, run literally.

Given the documented ``/etc/gpuledger/gpuledger.toml`` (its paths moved under a temporary
directory) and an ``/etc/gpuledger/registry.toml`` the operator edited (a new project, a new
rate), when the consumer runs the command of its systemd unit and the month is closed, then
the new project is stored (not quarantined) and priced at the edited rate: the host prices
with the registry it was given, never with the sample shipped in the package. And a server
command given no registry at all refuses with one line that says how to give one.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from spine_events import event  # noqa: E402

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
OPERATORS = REPO / "docs" / "operators.md"
CONSUMER_UNIT = REPO / "deploy" / "systemd" / "gpuledger-consumer.service"
SCHEDULER_UNIT = REPO / "deploy" / "systemd" / "gpuledger-scheduler.service"


def documented_ledger_config() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", OPERATORS.read_text(encoding="utf-8"), flags=re.S)
    ledger = [b for b in blocks if b.startswith("# /etc/gpuledger/gpuledger.toml on the ledger host")]
    assert len(ledger) == 1, "docs/operators.md: one ```toml block for the ledger host's gpuledger.toml"
    return ledger[0]


def exec_start(unit: Path) -> list[str]:
    """The unit's ExecStart as argv after the ``gpuledger`` program (continuation lines joined)."""
    text = unit.read_text(encoding="utf-8").replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0].endswith("/gpuledger"), argv
    return argv[1:]


def test_the_documented_ledger_host_prices_with_its_own_registry(tmp_path: Path, cli) -> None:
    etc, var = tmp_path / "etc" / "gpuledger", tmp_path / "var" / "lib" / "gpuledger"
    etc.mkdir(parents=True)
    config = documented_ledger_config().replace("/etc/gpuledger", str(etc)).replace("/var/lib/gpuledger", str(var))
    (etc / "gpuledger.toml").write_text(config, encoding="utf-8")
    sample = (REPO / "examples" / "registry.toml").read_text(encoding="utf-8")
    # the operator's edits: a project the sample does not have, and Samsung's B200 at 4,800 instead of 4,500
    samsung_b200 = 'entity = "samsung"\ngpu_model = "NVIDIA B200"\nkrw_per_gpu_hour = 4500\n'
    assert samsung_b200 in sample
    edited = sample.replace(samsung_b200, samsung_b200.replace("4500", "4800"))
    edited += '\n[projects.kisti-weather]\nentity = "gov"\nclass = "institute"\n'
    (etc / "registry.toml").write_text(edited, encoding="utf-8")

    events = [event(f"2026-10-05T03:{m:02d}:00Z", entity="samsung", project="samsung-foundry-ai") for m in range(30)]
    events += [event(f"2026-10-05T04:{m:02d}:00Z", gpu="GPU-0002", project="kisti-weather") for m in range(30)]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events), encoding="utf-8")
    # the file says bus = "kafka"; this tier has no broker, so the environment (which the
    # documented precedence puts above the file) swaps in the embedded bus; nothing else changes
    env = {"GPULEDGER_CONFIG": str(etc / "gpuledger.toml"), "GPULEDGER_BUS": "local"}
    cli("ingest", str(tmp_path / "events.jsonl"), cwd=tmp_path, env=env)
    consume = exec_start(CONSUMER_UNIT)
    assert consume[0] == "consume" and "--registry" not in consume and "--bus" not in consume
    consume = [("0" if arg == "9401" else arg) for arg in consume]  # any free port beside other tests
    consumed = cli(*consume, "--until-idle", cwd=tmp_path, env=env)
    assert "60 events accepted, 0 refused" in consumed.stdout
    starting = [json.loads(ln) for ln in consumed.stderr.splitlines() if ln.startswith("{")]
    assert any(ln.get("registry") == str(etc / "registry.toml") for ln in starting), consumed.stderr
    cli("close", "--month", "2026-10", cwd=tmp_path, env=env)

    rows = duckdb.sql(
        f"SELECT project, rate_krw_per_gpu_hour::VARCHAR, amount_krw::VARCHAR "
        f"FROM read_parquet('{var}/ledgers/billing/**/*.parquet') WHERE charge_class = 'usage' ORDER BY project"
    ).fetchall()
    assert rows == [("kisti-weather", "2340.00", "1170"), ("samsung-foundry-ai", "4800.00", "2400")], rows


# `export` and `report` speak for a sealed month with the registry sealed with it (invariant 8):
# they need none given, and never take the packaged sample either.
SERVER_COMMANDS = [
    ["consume", "--until-idle"],
    ["schedule"],
    ["close", "--month", "2026-10"],
    ["ingest", "events.jsonl"],
    ["quarantine", "replay"],
]


@pytest.mark.parametrize("command", SERVER_COMMANDS, ids=lambda c: c[0] if c[0] != "quarantine" else "replay")
def test_a_server_command_without_a_registry_refuses_in_one_line(command: list[str], tmp_path: Path, cli) -> None:
    (tmp_path / "events.jsonl").write_text(json.dumps(event()), encoding="utf-8")
    # an examples/registry.toml where the command runs is not picked up either: nothing is implied
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "registry.toml").write_text((REPO / "examples" / "registry.toml").read_text())
    result = cli(*command, "--data-dir", str(tmp_path / "data"), cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no registry given" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert "--registry" in errors[0] and "GPULEDGER_REGISTRY" in errors[0]
