"""Running NVML calls on a worker thread with a deadline.

NVML calls are known to hang for minutes (go-nvml#152, dcgm-exporter#164). The sampling
thread hands each unit of work (one GPU's reads) to a worker thread and waits at most
``timeout_s``. If the work does not come back, the worker is *abandoned*, not killed (a
thread blocked in a C call cannot be interrupted): it is marked retired, remembered as stuck
under the work's key, and a fresh worker takes the next call. While a key's stuck thread is
still blocked, calls for that key fail at once instead of parking another thread; at most
``max_stuck`` threads are ever parked (beyond that the driver as a whole is treated as hung
and every call fails at once until one returns).

Threads are daemons and are not joined at exit (``concurrent.futures`` joins its workers at
interpreter exit, so a hung call would block the agent's shutdown: it is not used here).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class NvmlCallTimeout(Exception):
    """A unit of NVML work did not finish within the deadline (internal to the collector)."""

    def __init__(self, key: str, timeout_s: float, reason: str = "timed out"):
        super().__init__(f"NVML call for {key} {reason} (deadline {timeout_s:g} s)")
        self.key = key
        self.timeout_s = timeout_s


class _Job:
    __slots__ = ("fn", "args", "done", "result", "error")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]):
        self.fn = fn
        self.args = args
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # handed to the waiting caller
            self.error = exc
        finally:
            self.done.set()


class _Thread:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.retired = False
        self.thread = threading.Thread(target=self._run, name="gpuledger-nvml", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job.run()
            if self.retired:
                return


class NvmlWorker:
    """Calls functions on a worker thread under a deadline (see the module docstring)."""

    def __init__(self, timeout_s: float, max_stuck: int = 4):
        self._timeout_s = timeout_s
        self._max_stuck = max_stuck
        self._current: _Thread | None = None
        self._stuck: dict[str, threading.Thread] = {}

    @property
    def stuck(self) -> list[str]:
        """Keys whose call is still blocked in the driver."""
        self._reap()
        return sorted(self._stuck)

    def call(self, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the worker; its result or its exception, or
        :class:`NvmlCallTimeout` after ``timeout_s``."""
        self._reap()
        if key in self._stuck:
            raise NvmlCallTimeout(key, self._timeout_s, "skipped: an earlier call is still stuck")
        if len(self._stuck) >= self._max_stuck:
            raise NvmlCallTimeout(key, self._timeout_s, f"skipped: {len(self._stuck)} calls stuck")
        if self._current is None:
            self._current = _Thread()
        job = _Job(fn, args)
        self._current.jobs.put(job)
        if not job.done.wait(self._timeout_s):
            self._current.retired = True
            self._stuck[key] = self._current.thread
            self._current = None
            raise NvmlCallTimeout(key, self._timeout_s)
        if job.error is not None:
            error, job.error = job.error, None
            raise error
        return job.result

    def _reap(self) -> None:
        for key in [k for k, t in self._stuck.items() if not t.is_alive()]:
            del self._stuck[key]

    def stop(self) -> None:
        """Let the current worker exit; stuck ones exit when their call returns."""
        if self._current is not None:
            self._current.jobs.put(None)
            self._current = None
