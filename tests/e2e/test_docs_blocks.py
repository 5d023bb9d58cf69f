"""Every shell and SQL block the docs tell a person to run is run here, against a real month.

The blocks are read from the Markdown itself (README.md, docs/*.md, the package READMEs), so a
doc edited after this test was written is still the doc that runs. Each block is either run
or listed in :data:`EXEMPT` with the reason (it needs Kafka, S3, systemd, docker, root or a
fresh clone); a new block that is neither fails :func:`test_every_block_is_run_or_exempt`.

The month: README's "typical day" block run as written (``examples/events.jsonl``, October
2026, embedded bus) from a scratch directory, closed with a signing key. Blocks written for
November 2026 (docs/auditors.md) run against that October: months are rewritten one back
(2026-11 → 2026-10, 2026-12 → 2026-11), and paths an operator would have (/srv/…,
operator.pub.pem) point at the scratch month. SQL runs in DuckDB (the reader auditors use);
a statement whose comment says "expect no rows" must return none.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("*/README.md"))]
RUN_LANGS = {"sh", "bash", "shell", "console", "sql"}


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository
    heading: str
    lang: str
    text: str

    @property
    def key(self) -> str:
        first = next(ln for ln in self.text.splitlines() if ln.strip())
        return f"{self.doc} :: {first.strip()[:60]}"


def blocks() -> list[Block]:
    found = []
    for doc in DOCS:
        heading = ""
        text = doc.read_text(encoding="utf-8")
        for match in re.finditer(r"^(#+ [^\n]*)$|^```(\w+)\n(.*?)^```", text, flags=re.M | re.S):
            if match.group(1):
                heading = match.group(1).lstrip("# ").strip()
            elif match.group(2) in RUN_LANGS:
                found.append(Block(str(doc.relative_to(REPO)), heading, match.group(2), match.group(3)))
    return found


# Blocks not run here, each with why. Keys are "doc :: first line" (its first 60 characters).
EXEMPT = {
    'README.md :: make demo   # venv + install + a simulated month through the':
        "a fresh clone's venv + install (minutes): timed by hand for the README; the demo itself runs in tests/e2e/test_cli_demo.py",
    'docs/kafka.md :: make kafka-up        # resolves the jars once (kafka/target/':
        'starts a Kafka broker: integration tier (tests/integration starts its own from the same script)',
    'docs/kafka.md :: docker compose up -d --build':
        'needs a docker engine; tests/unit/test_kafka_compose.py validates docker-compose.yml',
    'docs/kafka.md :: export GPULEDGER_KAFKA_BOOTSTRAP=kafka-1.example:9094,kafka-':
        "needs the operator's Kafka cluster (SASL_SSL): tests/integration/test_kafka_sasl.py runs these settings against a broker",
    'docs/operators.md :: python3 -m venv /opt/gpuledger/venv':
        'installs into /opt and /etc and enables a systemd unit (root, systemd): tests/unit/test_operator_kit.py checks the units',
    'docs/operators.md :: install -d -o 10001 /var/lib/gpuledger                      ':
        'needs a docker engine and a GPU; the entrypoint is tested in tests/unit/test_operator_kit.py',
    "docs/operators.md :: /opt/gpuledger/venv/bin/pip install '/path/to/gpuledger[serv":
        "installs into /opt and /etc and enables systemd units (root, systemd); its gpuledger.toml and the units' commands run in tests/e2e/test_documented_ledger_host.py",
    'docs/operators.md :: kafka-consumer-groups.sh --bootstrap-server kafka-1:9092 --g':
        "needs the operator's Kafka cluster and systemd",
    'docs/producers.md :: jq -rc \'"\\(.node)|\\(tojson)"\' events.jsonl \\':
        'needs a Kafka broker: tests/integration/test_kcat_producer.py publishes with kcat this way',
    'docs/s3.md :: eval "$(make -s s3-up)"   # builds once, starts .s3/, waits ':
        'builds (15 min) and starts the S3 server: integration tier (tests/integration/test_s3_server.py)',
    'docs/s3.md :: export AWS_ENDPOINT_URL=http://127.0.0.1:8333':
        'needs a running S3 server: tests/integration/test_s3_storage.py runs the CLI against one',
    'docs/s3.md :: weed mini -dir=<home>/data -ip=127.0.0.1 -ip.bind=127.0.0.1 ':
        'a template with placeholders (<home>, <S3_PORT>): scripts/s3.sh runs it',
}


def test_every_block_is_run_or_exempt() -> None:
    keys = {b.key for b in blocks()}
    stale = sorted(set(EXEMPT) - keys)
    assert not stale, f"exemptions for blocks that no longer exist: {stale}"
    unclassified = sorted(keys - set(EXEMPT) - {b.key for b in blocks() if runner_of(b)})
    assert not unclassified, f"blocks neither run nor exempt (add a runner or an exemption with the reason): {unclassified}"


def runner_of(block: Block) -> str | None:
    """Where a block runs: ``month`` (the scratch month's root), ``pack`` (its auditor pack),
    ``rawpack`` (its auditor pack exported with --raw-events), ``data`` (its data dir)."""
    if block.key in EXEMPT:
        return None
    if block.doc == "docs/auditors.md" and block.heading in ("Check an auditor pack", "Re-derive the totals"):
        return "pack"
    if block.doc == "docs/auditors.md" and block.heading.startswith("Re-derive the hourly usage from the raw events"):
        return "rawpack"
    if block.doc == "docs/auditors.md" and block.heading.startswith("Reading the live data directory"):
        return "data"
    return "month"


@pytest.fixture(scope="module")
def month(tmp_path_factory) -> dict[str, Path]:
    """README's typical day, run as written from a scratch directory, closed and signed."""
    root = tmp_path_factory.mktemp("docs-month")
    shutil.copytree(REPO / "examples", root / "examples")
    env = shell_env(root)
    subprocess.run(["gpuledger", "keys", "generate", "--private", "operator.pem", "--public", "operator.pub.pem"],
                   cwd=root, env=env, check=True, capture_output=True)
    (typical,) = [b for b in blocks() if b.doc == "README.md" and b.text.lstrip().startswith("export GPULEDGER_REGISTRY")]
    # the close is signed, so the auditors' openssl check has a signature to check
    script = typical.text.replace("gpuledger close --month 2026-10", "gpuledger close --month 2026-10 --signing-key operator.pem")
    assert script != typical.text, "README's typical day no longer closes 2026-10"
    run_shell(script, root, env)
    shutil.copy(REPO / "examples" / "registry.toml", root / "registry.toml")  # finance.md names ./registry.toml
    # the raw-events pack the auditors' re-derivation from raw starts from (docs/auditors.md)
    subprocess.run(["gpuledger", "export", "--month", "2026-10", "--raw-events", "--out", "rawpacks"],
                   cwd=root, env={**env, "GPULEDGER_REGISTRY": "examples/registry.toml"}, check=True, capture_output=True)
    return {
        "root": root, "data": root / "gpuledger-data", "pack": root / "packs" / "2026-10" / "auditor",
        "rawpack": root / "rawpacks" / "2026-10" / "auditor",
    }


def shell_env(root: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")}
    return {**env, "PATH": f"{venv_bin}:{env.get('PATH', '')}", "GPULEDGER_CONFIG": "", "HOME": str(root)}


def run_shell(script: str, cwd: Path, env: dict[str, str], shell: str = "bash") -> subprocess.CompletedProcess[str]:
    argv = ["bash", "-e", "-o", "pipefail", "-c", script] if shell == "bash" else ["sh", "-e", "-c", script]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{script}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


def one_month_back(text: str) -> str:
    return text.replace("2026-11", "2026-10").replace("2026-12", "2026-11")


def run_sql(text: str, cwd: Path) -> None:
    statements = [s for s in re.split(r";\s*(?:\n|$)", text) if s.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in s.splitlines())]
    assert statements
    previous = Path.cwd()
    os.chdir(cwd)  # the docs' paths are relative to where the reader stands
    try:
        db = duckdb.connect()
        for statement in statements:
            rows = db.execute(statement).fetchall()
            code = "\n".join(ln for ln in statement.splitlines() if not ln.strip().startswith("--")).strip()
            if "expect no rows" in statement:
                assert rows == [], f"expected no rows:\n{statement}\n{rows[:5]}"
            elif code.upper().startswith("SELECT"):  # a plain query: it must find the month's figures
                assert rows and all(r[-1] is not None for r in rows), f"found nothing:\n{statement}\n{rows}"
    finally:
        os.chdir(previous)


RUN = [b for b in blocks() if runner_of(b)]


@pytest.mark.parametrize("block", RUN, ids=[b.key for b in RUN])
def test_the_block_runs(block: Block, month: dict[str, Path]) -> None:
    where = {"month": month["root"], "pack": month["pack"], "rawpack": month["rawpack"], "data": month["data"]}[runner_of(block)]
    text = block.text
    if block.doc == "docs/auditors.md":
        text = one_month_back(text).replace("/srv/gpuledger-data", str(month["data"]))
        if runner_of(block) in ("pack", "rawpack"):
            shutil.copy(month["root"] / "operator.pub.pem", where / "operator.pub.pem")
    if block.doc == "README.md" and block.lang == "sql":
        # README's query reads the demo's month; the typical day's month stands in for it
        (month["data"] / "demo").unlink(missing_ok=True)
        (month["data"] / "demo").symlink_to(month["data"], target_is_directory=True)
        where = month["root"]
    if block.lang == "sql":
        run_sql(text, where)
        return
    if block.doc == "README.md" and text.lstrip().startswith("export GPULEDGER_REGISTRY"):
        assert (month["data"] / "manifests" / "2026-10.json").is_file()  # ran in the fixture, as written
        return
    shell = "sh" if "`sh`" in block_context(block) else "bash"
    out = run_shell(text, where, shell_env(month["root"]), shell=shell)
    if block.doc == "docs/producers.md":  # the event_id example: the consumer's own formula
        from streams.schema import make_event_id

        values = dict(re.findall(r"(\w+)=(\S+)", text.splitlines()[0]))
        assert out.stdout.strip() == make_event_id(values["node"], values["device_uuid"], values["interval_start"])


def block_context(block: Block) -> str:
    """The paragraph before the block (it says which shell)."""
    text = (REPO / block.doc).read_text(encoding="utf-8")
    at = text.index(block.text)
    return text[max(0, at - 300) : at]
