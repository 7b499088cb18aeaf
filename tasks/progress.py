"""Progress of long work for whoever watches it: a rich bar on a terminal, a line at a steady interval in a
scheduled run's log, and a Prefect progress artifact on the server's UI.

Training steps, sampled volumes and evaluation phases report through one `ProgressReporter` each. A person at a
terminal sees bars (stage, done / total, loss, rate, time left); a run whose output is not a terminal (a worker,
CI) logs one line every `GEM3D_PROGRESS_INTERVAL` seconds (default 30) and at the end; inside a Prefect run the
same fraction reaches a progress artifact, so the UI shows where a nightly run is.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ARTIFACT_INTERVAL_SECONDS = 5.0
"""Progress artifacts are API calls: updated at most this often (and at the end)."""
DEFAULT_LOG_INTERVAL_SECONDS = 30.0

logger = logging.getLogger("gem3d.progress")
_bars: Progress | None = None
_bars_lock = threading.Lock()


def on_terminal() -> bool:
    """Whether a person watches: stderr is a terminal and `GEM3D_PROGRESS` does not ask for log lines."""
    return sys.stderr.isatty() and os.environ.get("GEM3D_PROGRESS", "auto") != "log"


def log_interval() -> float:
    """Seconds between progress lines when nobody watches a terminal (`GEM3D_PROGRESS_INTERVAL`)."""
    return float(os.environ.get("GEM3D_PROGRESS_INTERVAL", DEFAULT_LOG_INTERVAL_SECONDS))


def _shared_bars() -> Progress:
    """One live display for the process, so bars of parallel tasks stack instead of fighting over the screen."""
    global _bars
    with _bars_lock:
        if _bars is None:
            _bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            _bars.start()
        return _bars


def _in_prefect_run() -> bool:
    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


class ProgressReporter:
    """Progress of one piece of long work, `done` out of `total` `unit`s, with optional fields such as the loss."""

    def __init__(self, description: str, total: int, unit: str = "steps") -> None:
        self.description, self.total, self.unit = description, max(int(total), 1), unit
        self.done, self.status, self.fields = 0, "", {}
        self.started = time.monotonic()
        self._logged_at = -math.inf
        self._artifact_at = -math.inf
        self._bar = _shared_bars().add_task(description, total=self.total, detail="") if on_terminal() else None
        self._artifact: UUID | None = None
        if _in_prefect_run():
            key = "".join(char if char.isalnum() else "-" for char in description.lower()).strip("-")
            self._artifact = create_progress_artifact(0.0, key=key, description=description)

    def update(self, done: int, status: str = "", total: int | None = None, **fields: float) -> None:
        """Record that `done` units are finished (out of a new `total` when the work learns it late); `status`
        (what runs now) and fields (e.g. loss) are shown beside the count."""
        if total is not None:
            self.total = max(int(total), 1)
            if self._bar is not None:
                _shared_bars().update(self._bar, total=self.total)
        self.done, self.status, self.fields = min(int(done), self.total), status, fields
        now = time.monotonic()
        finished = self.done >= self.total
        if self._bar is not None:
            _shared_bars().update(self._bar, completed=self.done, detail=self._detail())
        elif finished or now - self._logged_at >= log_interval():
            self._logged_at = now
            logger.info(self.line())
        if self._artifact is not None and (finished or now - self._artifact_at >= ARTIFACT_INTERVAL_SECONDS):
            self._artifact_at = now
            update_progress_artifact(self._artifact, 100.0 * self.done / self.total, description=self.line())

    def close(self) -> None:
        """Remove the bar (the work is over, finished or not)."""
        if self._bar is not None:
            _shared_bars().remove_task(self._bar)

    def line(self) -> str:
        """One log line: what, how far, the fields, the rate and the time left."""
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        parts = [f"{self.description} {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"]
        if self.status or self.fields:
            parts.append(self._detail())
        parts.append(f"{rate:.2f} {self.unit}/s")
        parts.append("done" if self.done >= self.total else f"{left:.0f} s left" if math.isfinite(left) else "")
        return ", ".join(part for part in parts if part)

    def _detail(self) -> str:
        values = [f"{name} {value:.4g}" for name, value in self.fields.items()]
        return ", ".join([self.status, *values] if self.status else values)

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
