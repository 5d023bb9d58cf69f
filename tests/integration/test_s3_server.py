"""The S3-compatible server the project starts (scripts/s3.sh, SeaweedFS) serves what gpuledger's
storage needs: pyarrow reads and writes objects, deltalake appends with application
transactions, several processes appending at once lose no commit, and refused credentials
come back as an error that names what was refused.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from s3_server import S3Endpoint

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def filesystem(s3: S3Endpoint, secret_key: str | None = None) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        endpoint_override=s3.endpoint_url,
        access_key=s3.access_key,
        secret_key=secret_key or s3.secret_key,
        region=s3.region,
        scheme="http",
    )


def test_pyarrow_writes_and_reads_parquet(s3: S3Endpoint, s3_prefix: str) -> None:
    fs = filesystem(s3)
    table = pa.table({"event_id": ["a", "b", "c"], "gpu_microseconds": [60_000_000, 30_000_000, 1]})
    path = f"{s3.bucket}/{s3_prefix}/part-0.parquet"
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)
    listed = fs.get_file_info(pafs.FileSelector(f"{s3.bucket}/{s3_prefix}"))
    assert [info.base_name for info in listed] == ["part-0.parquet"]


def test_deltalake_appends_carry_their_application_transaction(s3: S3Endpoint, s3_prefix: str) -> None:
    """Given two appends, each committing a Kafka partition's last offset as the version of
    its app id, then the table has both and each app id reads back its own last version."""
    url = s3.url(s3_prefix, "raw")
    options = s3.storage_options()
    first = pa.table({"event_id": ["a", "b"], "offset": [0, 1]})
    second = pa.table({"event_id": ["c"], "offset": [2]})
    write_deltalake(url, first, mode="append", storage_options=options,
                    commit_properties=CommitProperties(app_transactions=[Transaction("group/gpu.usage.v1/0", 1)]))
    write_deltalake(url, second, mode="append", storage_options=options,
                    commit_properties=CommitProperties(app_transactions=[Transaction("group/gpu.usage.v1/3", 2)]))
    table = DeltaTable(url, storage_options=options)
    assert table.version() == 1
    assert table.transaction_version("group/gpu.usage.v1/0") == 1
    assert table.transaction_version("group/gpu.usage.v1/3") == 2
    assert table.transaction_version("group/gpu.usage.v1/7") is None
    assert sorted(table.to_pyarrow_table()["event_id"].to_pylist()) == ["a", "b", "c"]


WRITER = textwrap.dedent(
    """
    import json, pathlib, sys, time
    import pyarrow as pa
    from deltalake import CommitProperties, Transaction, write_deltalake
    url, writer, commits = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(sys.argv[4]) as f:
        options = json.load(f)
    go = pathlib.Path(sys.argv[4]).with_name("go")
    pathlib.Path(sys.argv[4]).with_name(writer + ".ready").touch()
    while not go.exists():  # both writers start their commits together
        time.sleep(0.01)
    for n in range(commits):
        write_deltalake(
            url, pa.table({"writer": [writer], "n": [n]}), mode="append", storage_options=options,
            commit_properties=CommitProperties(app_transactions=[Transaction(writer, n)], max_commit_retries=100),
        )
    """
)


def test_two_processes_appending_at_once_lose_no_commit(s3: S3Endpoint, s3_prefix: str, tmp_path: Path) -> None:
    """Given two writer processes appending 15 commits each to one table at the same time
    (etag conditional puts: a commit that loses the race retries on the next version), then
    every row is there, the log has 30 versions, and each writer's last version reads back."""
    import json

    url = s3.url(s3_prefix, "shared")
    options = s3.storage_options()
    write_deltalake(url, pa.table({"writer": pa.array([], pa.string()), "n": pa.array([], pa.int64())}),
                    mode="append", storage_options=options)  # version 0: the empty table
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    settings = tmp_path / "options.json"
    settings.write_text(json.dumps(options))
    commits = 15
    logs = {name: tmp_path / f"{name}.log" for name in ("host-a", "host-b")}
    writers = []
    for name, log in logs.items():
        with log.open("w") as stderr:
            writers.append(subprocess.Popen([sys.executable, str(script), url, name, str(commits), str(settings)],
                                            stdout=subprocess.DEVNULL, stderr=stderr))
    ready = [tmp_path / f"{name}.ready" for name in logs]
    for _ in range(6000):
        if all(r.exists() for r in ready) or any(w.poll() is not None for w in writers):
            break
        time.sleep(0.01)
    (tmp_path / "go").touch()
    codes = [writer.wait(timeout=600) for writer in writers]
    assert codes == [0, 0], {name: log.read_text()[-2000:] for name, log in logs.items()}
    table = DeltaTable(url, storage_options=options)
    assert table.version() == 2 * commits
    rows = sorted(zip(*table.to_pyarrow_table().select(["writer", "n"]).to_pydict().values(), strict=True))
    assert rows == sorted((w, n) for w in ("host-a", "host-b") for n in range(commits))
    assert table.transaction_version("host-a") == commits - 1
    assert table.transaction_version("host-b") == commits - 1
    # the commits really raced: in version order, the writers take turns at least once
    order = [_app_id(s3, s3_prefix, version) for version in range(1, 2 * commits + 1)]
    assert sum(1 for a, b in zip(order, order[1:]) if a != b) >= 2, order


def _app_id(s3: S3Endpoint, prefix: str, version: int) -> str:
    """The app id of the transaction action in one commit of the Delta log."""
    import json

    path = f"{s3.bucket}/{prefix}/shared/_delta_log/{version:020d}.json"
    with filesystem(s3).open_input_stream(path) as f:
        actions = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
    return next(a["txn"]["appId"] for a in actions if "txn" in a)


def test_refused_credentials_say_so(s3: S3Endpoint, s3_prefix: str) -> None:
    """Given a wrong secret key (and, apart, an unknown access key), then pyarrow and deltalake
    both raise an error whose text shows the server refused the signature or the key: the
    storage layer turns these into a one-line error naming AWS_SECRET_ACCESS_KEY /
    AWS_ACCESS_KEY_ID."""
    url = s3.url(s3_prefix, "refused")
    write_deltalake(url, pa.table({"x": [1]}), mode="append", storage_options=s3.storage_options())

    with pytest.raises(OSError, match="SIGNATURE_DOES_NOT_MATCH|ACCESS_DENIED"):
        pq.write_table(pa.table({"x": [1]}), f"{s3.bucket}/{s3_prefix}/x.parquet",
                       filesystem=filesystem(s3, secret_key="not-the-secret"))
    wrong_secret = s3.storage_options() | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    with pytest.raises(OSError, match="SignatureDoesNotMatch") as refused:
        DeltaTable(url, storage_options=wrong_secret)
    assert "403 Forbidden" in str(refused.value)
    with pytest.raises(OSError, match="SignatureDoesNotMatch"):
        write_deltalake(url, pa.table({"x": [2]}), mode="append", storage_options=wrong_secret)
    unknown_key = s3.storage_options() | {"AWS_ACCESS_KEY_ID": "nobody"}
    with pytest.raises(OSError, match="InvalidAccessKeyId"):
        DeltaTable(url, storage_options=unknown_key)
    # nothing was written by the refused attempts
    assert DeltaTable(url, storage_options=s3.storage_options()).version() == 0
