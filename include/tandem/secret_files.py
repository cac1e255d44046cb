"""Secrets generated once and kept in files under TANDEM_HOME (never in the repo, never printed).

``read_or_create`` writes a new secret to a temporary file that is created with mode 0600 in the same
``open`` call (no window where it is readable by others), then links it into place. ``os.link`` fails when
the target exists, so when two processes start for the first time at once, one secret wins and both return
it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

MODE = 0o600


def read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The secret stored at ``path``; made with ``make()`` and stored (0600, atomically) when there is none."""
    path = Path(path)
    existing = _read(path)
    if existing:
        return existing
    value = make()
    try:
        _place(path, value + "\n", os.link)  # link fails when the target exists: no secret is overwritten
    except FileExistsError:  # another first start won: use its secret
        return _read(path) or value
    return value


def write(path: Path, text: str) -> Path:
    """Replace the secret file at ``path`` with ``text`` (created 0600, renamed into place)."""
    path = Path(path)
    _place(path, text, os.replace)
    return path


def _place(path: Path, text: str, put: Callable[[Path, Path], None]) -> None:
    """Write ``text`` to a temporary file created 0600, then ``put(tmp, path)`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        put(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""
