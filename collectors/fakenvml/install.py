"""Installing the fake library underneath the real pynvml, and taking it away again."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import pynvml

from collectors.fakenvml.library import FakeNvmlLibrary
from collectors.fakenvml.model import Scenario

_installed = threading.Lock()  # pynvml's state is module-global: one fake at a time


@contextlib.contextmanager
def _swapped(library: object | None, loader: Callable[..., object] | None = None) -> Iterator[None]:
    if not _installed.acquire(blocking=False):
        raise RuntimeError("a fake NVML is already installed in this process")
    try:
        with pynvml.libLoadLock:
            saved = (
                pynvml.nvmlLib,
                dict(pynvml._nvmlGetFunctionPointer_cache),
                pynvml._nvmlLib_refcount,
                pynvml.CDLL,
            )
            pynvml.nvmlLib = library
            pynvml._nvmlGetFunctionPointer_cache.clear()
            pynvml._nvmlLib_refcount = 0
            if loader is not None:
                pynvml.CDLL = loader
        try:
            yield
        finally:
            with pynvml.libLoadLock:
                (pynvml.nvmlLib, cache, pynvml._nvmlLib_refcount, pynvml.CDLL) = saved
                pynvml._nvmlGetFunctionPointer_cache.clear()
                pynvml._nvmlGetFunctionPointer_cache.update(cache)
    finally:
        _installed.release()


@contextlib.contextmanager
def installed(scenario: Scenario) -> Iterator[FakeNvmlLibrary]:
    """Make pynvml talk to a fake library over ``scenario`` for the duration of the block.

    On exit every hung call is released (so no thread stays blocked in the fake) and
    pynvml's library, function-pointer cache and init refcount are restored.
    """
    library = FakeNvmlLibrary(scenario)
    try:
        with _swapped(library):
            yield library
    finally:
        scenario.release_hangs()


def _no_library(name: str, *args: object, **kwargs: object) -> object:
    raise OSError(f"{name}: cannot open shared object file: No such file or directory")


@contextlib.contextmanager
def library_absent() -> Iterator[None]:
    """A machine without the NVIDIA driver: loading ``libnvidia-ml.so.1`` fails."""
    with _swapped(None, loader=_no_library):
        yield
