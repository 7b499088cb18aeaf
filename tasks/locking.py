"""The work-folder lock: one `gem3d` command that rewrites a work folder at a time, decided at once.

`WORKDIR/.gem3d.lock` is held with `fcntl.flock` for a command's life, so the kernel releases it when the
process ends, however it ends. Commands that rewrite the folder (run, preprocess, train, evaluate) hold it
exclusively; synthesis commands (enhance, counterfactual, de-enhance) only read its models and publish into
their synthetic store under that store's own lock, so they hold it shared and may run side by side. A second
command that cannot have the lock fails at once with `WorkFolderBusy` naming the holder: it never waits
behind, or interleaves with, a run that may take hours.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

LOCK_FILE = ".gem3d.lock"


class WorkFolderBusy(RuntimeError):
    """Another process holds the work folder's lock."""

    def __init__(self, folder: Path, holder: str) -> None:
        self.folder = folder
        super().__init__(
            f"{folder}: in use by another gem3d command ({holder}); wait for it to finish or use another --workdir"
        )


@dataclass
class _Held:
    """A lock this process holds: its open file, whether exclusive, and how many blocks share it."""

    stream: IO[str]
    exclusive: bool
    depth: int = 1


_held: dict[Path, _Held] = {}
_registry = threading.Lock()


def _holder(stream: IO[str]) -> str:
    """What the exclusive holder wrote into the lock file, or a generic description for shared holders."""
    stream.seek(0)
    return stream.read().strip() or "synthesis commands"


def _acquire(stream: IO[str], folder: Path, exclusive: bool) -> None:
    """flock without waiting; `WorkFolderBusy` when another open file of the lock holds it."""
    try:
        fcntl.flock(stream, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise WorkFolderBusy(folder, _holder(stream)) from None


def _record_holder(stream: IO[str], command: str) -> None:
    """Name this process in the lock file (exclusive holders only: shared ones would overwrite each other)."""
    stream.seek(0)
    stream.truncate()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    stream.write(f"{command}, pid {os.getpid()} on {socket.gethostname()}, since {started}")
    stream.flush()


def _release(folder: Path, held: _Held) -> None:
    """Leave the block: the last one out clears the holder note and closes the file (which unlocks it)."""
    held.depth -= 1
    if held.depth:
        return
    del _held[folder]
    if held.exclusive:
        held.stream.truncate(0)
    held.stream.close()


@contextmanager
def work_folder_lock(folder: str | Path, command: str, shared: bool = False) -> Iterator[Path]:
    """Hold `folder`'s lock (created with the folder) for the block; raise `WorkFolderBusy` at once if taken.

    Re-entrant within a process: the CLI holds it and the pipeline flow it runs asks again; a nested block
    shares the hold already there.
    """
    folder = Path(folder).resolve()
    if folder.exists() and not folder.is_dir():  # mkdir would call it "File exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    with _registry:
        held = _held.get(folder)
        if held is None:
            stream = open(folder / LOCK_FILE, "a+")  # noqa: SIM115  (closed by _release)
            try:
                _acquire(stream, folder, not shared)
            except BaseException:
                stream.close()
                raise
            held = _held[folder] = _Held(stream, not shared, 0)
            if held.exclusive:
                _record_holder(stream, command)
        held.depth += 1
    try:
        yield folder
    finally:
        with _registry:
            _release(folder, held)
