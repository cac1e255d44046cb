"""Progress of long phases: a tqdm bar on stderr for the CLI, periodic log lines (counts and rates) always."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("tandem.knowledge")


class Progress:
    def __init__(self, desc: str, total: int | None, *, bar: bool, unit: str = "doc", log_every_s: float = 10.0,
                 beat=None, beat_every_s: float = 30.0):
        self.desc, self.total, self.unit = desc, total, unit
        self._beat, self._beat_every_s, self._last_beat = beat, beat_every_s, time.monotonic()
        self.count = 0
        self.started = self._last_log = time.monotonic()
        self.log_every_s = log_every_s
        self._bar = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.monotonic()
        if self._beat is not None and now - self._last_beat >= self._beat_every_s:
            self._last_beat = now
            self._beat()  # a long phase keeps the run's lease alive
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            self._log(now)

    def _log(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        log.info("%s: %d%s %ss (%.1f %ss/s)", self.desc, self.count, of, self.unit,
                 self.count / elapsed, self.unit)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._log(time.monotonic())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
