"""Cost of the local bus's damage checks (issue 18, item 5): opening a consumer whose saved
position is at the end of a log of N records (the header walk that proves the position is a
record boundary of the right offset), and small appends each recording the durable end.

    PYTHONPATH=. .venv/bin/python bench/bench_localbus_checks.py 500000 2000

The peer is the same script run against a checkout from before the change
(``git archive b4df8b4 | tar -x -C OLD; PYTHONPATH=OLD …``). Prints CPU-seconds (user+sys)."""
import json, os, resource, sys, tempfile, time
from pathlib import Path
from streams.localbus import LocalBus

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

n = int(sys.argv[1])
appends = int(sys.argv[2])
with tempfile.TemporaryDirectory() as d:
    bus = LocalBus(Path(d) / "bus")
    p = bus.producer("t")
    value = b"x" * 100
    for _ in range(n):
        p.send("node", value)
    p.flush()
    c = bus.consumer("t", "g")
    read = 0
    while batch := c.poll_batch(100_000, 0.0):
        read += len(batch)
        c.commit({0: batch[-1].offset + 1})
    c.close()
    assert read == n, read
    t0, c0 = time.perf_counter(), cpu()
    c = bus.consumer("t", "g")
    assert c.poll_batch(10, 0.0) == []
    c.close()
    open_cpu, open_wall = cpu() - c0, time.perf_counter() - t0
    t0, c0 = time.perf_counter(), cpu()
    for _ in range(appends):
        p.send("node", value)
        p.flush()
    app_cpu, app_wall = cpu() - c0, time.perf_counter() - t0
    print(json.dumps({"records": n, "open_cpu_s": round(open_cpu, 3), "open_wall_s": round(open_wall, 3),
                      "appends": appends, "append_cpu_ms_each": round(1000 * app_cpu / appends, 3),
                      "append_wall_ms_each": round(1000 * app_wall / appends, 3)}))
