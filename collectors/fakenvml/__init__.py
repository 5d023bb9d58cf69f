"""A faithful fake NVML underneath the real pynvml (see README.md)."""

from collectors.fakenvml.install import installed, library_absent
from collectors.fakenvml.library import FakeNvmlLibrary
from collectors.fakenvml.model import FakeGpu, FakeMig, FakeProcess, MigProfile, Scenario
from collectors.fakenvml import scenarios

__all__ = [
    "FakeGpu",
    "FakeMig",
    "FakeNvmlLibrary",
    "FakeProcess",
    "MigProfile",
    "Scenario",
    "installed",
    "library_absent",
    "scenarios",
]
