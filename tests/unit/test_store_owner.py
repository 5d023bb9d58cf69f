"""One store, one owner (issue 18, item 6): two consumers of different groups on one data dir
each passed their own group's lock and stored every event (60,000 raw rows for 30,000 ids).
The first consumer records its group and topic in ``<data-dir>/_owner.json``; a consumer of
another group is refused at start with one line; a group added on purpose is let in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from test_cli_damaged_state import REPO, cli, events_file, one_error_line

from storage.dataset import Store
from storage.owner import StoreOwnedElsewhere, add_group, claim, read_owner

pytestmark = pytest.mark.unit


def consume_as(group: str, data: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400", "GPULEDGER_CONFIG": "",
           "GPULEDGER_REGISTRY": str(REPO / "examples" / "registry.toml"), "GPULEDGER_KAFKA__CONSUMER_GROUP": group}
    return subprocess.Popen(
        [sys.executable, "-m", "gpuledger", "consume", "--until-idle", "--data-dir", str(data)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_groups_started_together_on_one_local_store_one_is_refused_and_nothing_doubles(tmp_path: Path) -> None:
    # given 6,000 events on the local bus of one data dir
    data = tmp_path / "data"
    assert cli("ingest", str(events_file(tmp_path / "e.jsonl", 6000)), data=data).returncode == 0
    # when two consumers of different groups start on it at the same time
    procs = {g: consume_as(g, data) for g in ("billing-a", "billing-b")}
    done = {}
    for g, p in procs.items():
        out, err = p.communicate(timeout=300)
        done[g] = (p.returncode, out, err)
    # then exactly one of them stored the events, the other was refused with one line
    codes = sorted(code for code, _, _ in done.values())
    assert codes == [0, 1], done
    refused = next(g for g, (code, _, _) in done.items() if code == 1)
    owner = next(g for g in done if g != refused)
    line = [ln for ln in done[refused][2].splitlines() if not ln.startswith("{")]
    assert len(line) == 1 and "Traceback" not in done[refused][2]
    assert f"is written by consumer group '{owner}' of topic 'gpu.usage.v1'" in line[0]
    assert f"this consumer is group '{refused}'" in line[0]
    assert f"gpuledger storage add-group {refused} --reason" in line[0]
    ids = pl.read_parquet(sorted(data.glob("raw/**/*.parquet")))["event_id"]
    assert ids.len() == ids.n_unique() == 6000


def test_a_group_added_on_purpose_is_let_in_and_the_change_is_recorded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli("ingest", str(events_file(tmp_path / "e.jsonl", 100)), data=data).returncode == 0
    assert cli("consume", "--until-idle", data=data).returncode == 0  # group gpuledger-consumer
    renamed = {**os.environ, "GPULEDGER_KAFKA__CONSUMER_GROUP": "billing-2027"}
    proc = subprocess.run([sys.executable, "-m", "gpuledger", "consume", "--until-idle", "--data-dir", str(data)],
                          cwd=REPO, env={**renamed, "PYTHONPATH": str(REPO), "GPULEDGER_CONFIG": "",
                               "GPULEDGER_REGISTRY": str(REPO / "examples" / "registry.toml")},
                          capture_output=True, text=True, timeout=300)
    assert "is refused" in one_error_line(proc)
    # when the operator hands the store to the renamed group on purpose
    added = cli("storage", "add-group", "billing-2027", "--reason", "group renamed for 2027", data=data)
    assert added.returncode == 0, added.stderr
    shown = cli("storage", "owner", data=data)
    assert "gpuledger-consumer, billing-2027" in shown.stdout and "group renamed for 2027" in shown.stdout
    proc = subprocess.run([sys.executable, "-m", "gpuledger", "consume", "--until-idle", "--data-dir", str(data)],
                          cwd=REPO, env={**renamed, "PYTHONPATH": str(REPO), "GPULEDGER_CONFIG": "",
                               "GPULEDGER_REGISTRY": str(REPO / "examples" / "registry.toml")},
                          capture_output=True, text=True, timeout=300)
    # then it starts, and finds everything stored already
    assert proc.returncode == 0, proc.stderr
    assert "0 events accepted" in proc.stdout
    record = json.loads((data / "_owner.json").read_text())
    assert [h["event"] for h in record["history"]] == ["claimed by the first consumer", "group added on purpose"]


def test_claim_refuses_another_topic_and_a_garbled_record_is_named(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    assert claim(store, "g", "gpu.usage.v1").groups == ("g",)
    assert claim(store, "g", "gpu.usage.v1").groups == ("g",)  # the owner itself, again
    with pytest.raises(StoreOwnedElsewhere, match="of topic 'gpu.usage.v1'.*topic 'other.topic' and is refused"):
        claim(store, "g", "other.topic")
    assert add_group(store, "h", "migration").groups == ("g", "h")
    assert read_owner(store).groups == ("g", "h")
    (tmp_path / "d" / "_owner.json").write_text("{half")
    with pytest.raises(Exception, match=r"_owner.json: garbled owner record"):
        claim(store, "g", "gpu.usage.v1")
