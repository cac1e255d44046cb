"""Named fault points: the seam through which tests inject crashes and failures.

Production code calls ``point(name, **context)`` at the places where a crash or failure must be survivable
(after the plan, after each committed document, inside a document's write, before the canary, inside and
after the publish, after an adapter version is registered). In production ``hook`` is a no-op and nothing
is read from the environment. Tests replace ``hook``: in-process with pytest's ``monkeypatch``, and in the
subprocesses they start (the CLI, Airflow tasks) through ``tests/faultinject/sitecustomize.py``.
"""

from __future__ import annotations

from typing import Any, Callable


class InjectedFault(RuntimeError):
    """A failure raised by a test's hook at a fault point."""


def _no_fault(name: str, **context: Any) -> None:
    return None


hook: Callable[..., None] = _no_fault


def point(name: str, **context: Any) -> None:
    """A fault point; does nothing unless a test installed a hook."""
    hook(name, **context)
