"""An exclusive lock between processes and threads on one host, held on a lock file (``fcntl.flock``).

Used where several workers on one machine may build the same cache entry at once (the ONNX export, the base
model fetched from the model store): the first builds it, the others wait and then find it built.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
