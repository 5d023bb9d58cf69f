"""The audit commands end to end through the CLI: keys, verify (ok, then a tampered byte), export, report."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuledger.cli import app
from tests.unit.audit_month_fixture import PERIOD, build_month

pytestmark = pytest.mark.e2e

REGISTRY = Path(__file__).resolve().parents[2] / "examples" / "registry.toml"


def test_keys_verify_export_report(tmp_path: Path) -> None:
    runner = CliRunner()
    keys = tmp_path / "keys"
    # given a key pair made by the CLI and a month sealed with it
    made = runner.invoke(app, ["keys", "generate", "--private", str(keys / "k.pem"), "--public", str(keys / "k.pub")])
    assert made.exit_code == 0, made.output
    data = tmp_path / "data"
    build_month(data, signing_key=keys / "k.pem")
    common = ["--data-dir", str(data), "--registry", str(REGISTRY)]
    # when it is verified, it is ok
    ok = runner.invoke(app, ["verify", *common, "--public-key", str(keys / "k.pub")])
    assert ok.exit_code == 0, ok.output
    assert "verify ok: 1 period(s), 3 file(s), 1 signature(s) checked" in ok.output
    # and export and report write their packs
    exported = runner.invoke(app, ["export", "--month", PERIOD, "--out", str(tmp_path / "out"), *common])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "out" / PERIOD / "auditor" / "registry.toml").read_bytes() == REGISTRY.read_bytes()
    reported = runner.invoke(app, ["report", "--month", PERIOD, "--out", str(tmp_path / "rep"), *common])
    assert reported.exit_code == 0, reported.output
    assert (tmp_path / "rep" / PERIOD / "report.html").exists()
    # when one byte of the billing ledger changes, verify exits 1 and names the file
    ledger = data / "ledgers/billing/period=2026-11/billing.parquet"
    raw = bytearray(ledger.read_bytes())
    raw[-20] ^= 0x01
    ledger.write_bytes(bytes(raw))
    bad = runner.invoke(app, ["verify", *common])
    assert bad.exit_code == 1
    assert "2026-11: file_changed ledgers/billing/period=2026-11/billing.parquet" in bad.output


def test_every_audit_command_has_help() -> None:
    runner = CliRunner()
    for command in (["verify"], ["export"], ["report"], ["schedule"], ["keys", "generate"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage" in result.output


def test_verify_checks_the_newest_period_by_default_and_every_file_with_all(tmp_path: Path, cli) -> None:
    """Given a sealed month and a raw file stored after it (not sealed yet), both then damaged:
    the default verify walks the chain and the newest period; --all also re-hashes every table
    file against the SHA-256 its commit recorded, and names the damaged one."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from spine_events import ACCOUNTS, event, jsonl

    from streams.pipeline import BatchProcessor

    data = tmp_path / "data"
    store = build_month(data)
    BatchProcessor(store, ACCOUNTS).process([("m", jsonl(event("2026-12-02T00:00:00Z")))])
    cli("verify", "--data-dir", str(data))
    raw_file = Path(store.files("raw")[0])
    damaged = bytearray(raw_file.read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    raw_file.write_bytes(bytes(damaged))
    assert cli("verify", "--data-dir", str(data)).returncode == 0  # raw is not sealed: not its job
    found = cli("verify", "--all", "--data-dir", str(data), check=False)
    assert found.returncode == 1
    assert "damaged since commit: raw/period=2026-12/date=2026-12-02/" in found.stdout
