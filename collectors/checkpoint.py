"""Where the agent keeps its open interval across a restart (next to the spool).

A JSON file written atomically (temp file, fsync, rename). ``load`` returns ``None`` when
there is none. The agent saves on a graceful stop and loads (then clears) on start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class FileCheckpoint:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def load(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
