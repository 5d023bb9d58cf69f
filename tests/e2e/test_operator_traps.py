"""The traps an operator fell into, each failing loudly now (issue 10, "an install without traps").

Every test runs the real CLI in a subprocess, as an operator would, and reads what they read:
the exit status, the one-line reason, the JSON log lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from spine_events import event  # noqa: E402

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def json_lines(text: str) -> list[dict]:
    """The JSON log lines of a command's stderr (other lines are ignored)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def ingest_month(cli, tmp_path: Path, data: Path, *, project: str = "snu-llm", minutes: int = 20) -> None:
    events = [event(f"2026-10-05T03:{m:02d}:00Z", project=project) for m in range(minutes)]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events))
    cli("ingest", str(path), "--registry", "examples/registry.toml", "--data-dir", str(data))
    cli("consume", "--until-idle", "--registry", "examples/registry.toml", "--data-dir", str(data))


# -- settings ---------------------------------------------------------------------------------
def test_a_config_file_that_does_not_exist_is_an_error(tmp_path: Path, cli) -> None:
    missing = tmp_path / "etc" / "gpuledger.toml"
    done = cli("verify", "--data-dir", str(tmp_path), env={"GPULEDGER_CONFIG": str(missing)}, check=False)
    assert done.returncode == 1
    assert f"GPULEDGER_CONFIG names {missing}, which does not exist" in done.stderr.replace("\n", "")


def test_unknown_keys_in_any_section_are_named_all_at_once(tmp_path: Path, cli) -> None:
    config = tmp_path / "gpuledger.toml"
    config.write_text('bus = "kafka"\nbuss = "kafka"\n[collector]\nintervall_s = 30\n[kafka]\nbootstrapp = "k:9092"\n')
    done = cli("collect", "--simulate", "--once", "--no-metrics", "--data-dir", str(tmp_path),
               env={"GPULEDGER_CONFIG": str(config)}, check=False)
    assert done.returncode == 1
    reason = done.stderr.replace("\n", "")
    assert "unknown key(s)" in reason
    for key in ("buss", "collector.intervall_s", "kafka.bootstrapp"):
        assert key in reason, key


# -- the collector ----------------------------------------------------------------------------
def test_collect_names_its_bus_in_its_start_up_log(tmp_path: Path, cli) -> None:
    done = cli("collect", "--simulate", "--once", "--no-metrics", "--data-dir", str(tmp_path / "a"))
    bus_lines = [line for line in json_lines(done.stderr) if line.get("bus") == "local"]
    assert bus_lines and bus_lines[0]["path"] == str(tmp_path / "a" / "bus")
    # (the loud warning of a real node on the local bus: tests/unit/test_operator_kit.py)


def test_collect_simulate_once_works_outside_the_repository(tmp_path: Path, cli) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = cli("collect", "--simulate", "--once", "--no-metrics", "--data-dir", "d", cwd=elsewhere)
    assert "8 events published" in done.stdout
    assert (elsewhere / "d" / "bus").is_dir()


# -- close, verify, sign ----------------------------------------------------------------------
def test_close_refuses_a_month_without_usage_unless_told(tmp_path: Path, cli) -> None:
    data = tmp_path / "empty"
    refused = cli("close", "--month", "2026-10", "--registry", "examples/registry.toml", "--data-dir", str(data), check=False)
    assert refused.returncode == 1
    assert "holds no usage for 2026-10" in refused.stderr.replace("\n", "")
    assert not (data / "manifests").exists()
    allowed = cli("close", "--month", "2026-10", "--allow-empty", "--registry", "examples/registry.toml", "--data-dir", str(data))
    assert allowed.returncode == 0
    assert (data / "manifests" / "2026-10.json").exists()


def test_verify_on_an_empty_directory_fails_saying_nothing_is_sealed(tmp_path: Path, cli) -> None:
    done = cli("verify", "--data-dir", str(tmp_path / "nothing"), check=False)
    assert done.returncode == 1
    assert "nothing sealed" in done.stderr
    assert "verify ok" not in done.stdout


def test_a_month_closed_without_a_key_can_be_signed_later(tmp_path: Path, cli) -> None:
    data = tmp_path / "data"
    ingest_month(cli, tmp_path, data)
    cli("close", "--month", "2026-10", "--registry", "examples/registry.toml", "--data-dir", str(data))
    keys = tmp_path / "keys"
    cli("keys", "generate", "--private", str(keys / "k.pem"), "--public", str(keys / "k.pub"))
    # when the close is repeated with a key, it writes nothing and says how to sign
    again = cli("close", "--month", "2026-10", "--signing-key", str(keys / "k.pem"), "--registry", "examples/registry.toml", "--data-dir", str(data), check=False)
    assert again.returncode == 1
    assert "gpuledger sign --month 2026-10" in again.stderr.replace("\n", "")
    assert not (data / "manifests" / "2026-10.json.sig").exists()
    # then `sign` signs the existing manifest and verify checks that signature
    manifest = (data / "manifests" / "2026-10.json").read_bytes()
    cli("sign", "--month", "2026-10", "--signing-key", str(keys / "k.pem"), "--data-dir", str(data))
    assert (data / "manifests" / "2026-10.json").read_bytes() == manifest
    verified = cli("verify", "--public-key", str(keys / "k.pub"), "--data-dir", str(data))
    assert "1 signature(s) checked" in verified.stdout
    # and a second close with the key is content: the signature exists
    cli("close", "--month", "2026-10", "--signing-key", str(keys / "k.pem"), "--registry", "examples/registry.toml", "--data-dir", str(data))


def test_sign_refuses_a_manifest_that_does_not_verify(tmp_path: Path, cli) -> None:
    data = tmp_path / "data"
    ingest_month(cli, tmp_path, data)
    cli("close", "--month", "2026-10", "--registry", "examples/registry.toml", "--data-dir", str(data))
    cli("keys", "generate", "--private", str(tmp_path / "k.pem"), "--public", str(tmp_path / "k.pub"))
    ledger = data / "ledgers/billing/period=2026-10/billing.parquet"
    raw = bytearray(ledger.read_bytes())
    raw[-20] ^= 0x01
    ledger.write_bytes(bytes(raw))
    done = cli("sign", "--month", "2026-10", "--signing-key", str(tmp_path / "k.pem"), "--data-dir", str(data), check=False)
    assert done.returncode == 1
    assert "does not verify" in done.stderr
    assert not (data / "manifests" / "2026-10.json.sig").exists()


# -- quarantine -------------------------------------------------------------------------------
def test_quarantine_list_says_when_nothing_is_refused(tmp_path: Path, cli) -> None:
    done = cli("quarantine", "list", "--data-dir", str(tmp_path / "data"))
    assert "quarantine: no refused lines" in done.stdout
    assert "period" not in done.stdout  # no bare table


def test_quarantine_list_stops_counting_what_replay_readmitted(tmp_path: Path, cli) -> None:
    data = tmp_path / "data"
    ingest_month(cli, tmp_path, data, project="new-lab")
    before = cli("quarantine", "list", "--data-dir", str(data))
    assert "20 line(s) still refused; 0 re-admitted" in before.stdout
    amended = tmp_path / "registry.toml"
    amended.write_text((REPO / "examples/registry.toml").read_text()
                       + '\n[projects.new-lab]\nentity = "gov"\nclass = "university"\n')
    cli("quarantine", "replay", "--data-dir", str(data), "--registry", str(amended))
    after = cli("quarantine", "list", "--data-dir", str(data))
    assert "0 line(s) still refused; 20 re-admitted" in after.stdout


# -- logs of the long-running commands --------------------------------------------------------
def test_consume_logs_json_lines_naming_its_bus(tmp_path: Path, cli) -> None:
    done = cli("consume", "--until-idle", "--registry", "examples/registry.toml", "--data-dir", str(tmp_path / "data"))
    starting = [line for line in json_lines(done.stderr) if line["msg"] == "consumer starting"]
    assert starting and starting[0]["bus"] == "local" and starting[0]["logger"] == "gpuledger.consumer"


def test_schedule_logs_json_lines(tmp_path: Path) -> None:
    env = {**os.environ, "GPULEDGER_CONFIG": "", "COLUMNS": "120"}
    started = None
    with subprocess.Popen(
        [sys.executable, "-m", "gpuledger", "schedule", "--data-dir", str(tmp_path / "data"), "--registry", "examples/registry.toml"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            for line in proc.stderr:  # ends when the process does: a crash cannot hang the test
                if line.startswith("{") and json.loads(line)["msg"] == "scheduler started":
                    started = json.loads(line)
                    break
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    assert started is not None, "the scheduler never logged 'scheduler started'"
    assert started["logger"] == "gpuledger.scheduler" and started["catch_up_closed"] == []


# -- the slim install of a GPU node -----------------------------------------------------------
BLOCK_SERVER_MODULES = """
import sys
from gpuledger.cli_common import SERVER_MODULES

class Slim:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in SERVER_MODULES:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Slim())
import streams.kafka  # the Kafka bus of a node
from gpuledger.cli import main
sys.argv = ["gpuledger", *sys.argv[1:]]
main()
"""


def run_slim(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_SERVER_MODULES, *args],
        cwd=tmp_path, env={**os.environ, "GPULEDGER_CONFIG": ""}, capture_output=True, text=True, timeout=300,
    )


def test_the_collector_runs_without_the_server_extra(tmp_path: Path) -> None:
    done = run_slim(tmp_path, "collect", "--simulate", "--once", "--no-metrics", "--data-dir", "d")
    assert done.returncode == 0, done.stderr
    assert "8 events published" in done.stdout


def test_a_server_command_on_a_slim_install_says_what_to_install(tmp_path: Path) -> None:
    done = run_slim(tmp_path, "consume", "--until-idle", "--data-dir", "d")
    assert done.returncode == 1
    assert "pip install 'gpuledger[server]'" in done.stderr.replace("\n", "")


# -- the README, followed literally -----------------------------------------------------------
def test_the_readme_typical_day_runs_on_the_shipped_events(tmp_path: Path, cli) -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("A typical day on one machine", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    steps = [line.split("#", 1)[0].split() for line in block.strip().splitlines()]
    env = dict(s[1].split("=", 1) for s in steps if s[0] == "export")  # the registry it names
    steps = [s for s in steps if s[0] != "export"]
    assert [s[:2] for s in steps][0] == ["gpuledger", "ingest"] and "GPULEDGER_REGISTRY" in env
    outputs = {}
    for argv in steps:
        args = [a.replace("./packs", str(tmp_path / "packs")) for a in argv[1:]]
        outputs[argv[1]] = cli(*args, "--data-dir", str(tmp_path / "data"), env=env)
    assert "48 lines published" in outputs["ingest"].stdout and "0 will be refused" in outputs["ingest"].stdout
    assert "48 events accepted, 0 refused" in outputs["consume"].stdout.replace("\n", " ")
    assert "verify ok: 1 period(s)" in outputs["verify"].stdout
    assert (tmp_path / "packs" / "2026-10" / "finance").is_dir()
