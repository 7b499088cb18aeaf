"""Nothing outlives a `gem3d` command: its helper processes go when it goes, even when it is SIGKILLed.

Prefect starts its temporary API server (uvicorn) as a child process, and a local Dask cluster may start
worker processes; a SIGKILLed parent cannot stop them, so they were left behind holding their ports.
`supervise` therefore splits the command in two at start-up (POSIX): the process the user started stays a
small supervisor that forwards signals and waits, and a forked child runs the command in a process group
of its own, which every helper it starts joins. The two watch each other:

- the child reads a pipe whose only writer is the supervisor; end of file means the supervisor is gone
  (SIGKILL included), and the child kills its whole process group, itself and every helper;
- when the child ends, however it ends, the supervisor kills what is left of that group before it exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SUPERVISED = "GEM3D_SUPERVISED"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _kill_group(group: int) -> None:
    """SIGKILL every process of `group`; an empty group is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def _die_with_supervisor(watch_end: int) -> None:
    """In the child: a daemon thread that kills the child's process group once the supervisor is gone."""

    def watch() -> None:
        while os.read(watch_end, 1):  # the supervisor never writes: only end of file comes back
            pass
        _kill_group(os.getpgrp())

    threading.Thread(target=watch, name="gem3d-supervisor-watch", daemon=True).start()


def _forward_signals(group: int) -> None:
    """In the supervisor: pass terminal and termination signals on to the child's group (those not ignored);
    Ctrl-Z stops both, and both continue together."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signum)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        forward(signal.SIGTSTP, None)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, stop)  # continued
        forward(signal.SIGCONT, None)

    handlers = dict.fromkeys(FORWARDED, forward) | {signal.SIGTSTP: stop}
    for signum, handler in handlers.items():
        if signal.getsignal(signum) is not signal.SIG_IGN:  # what nohup or `&` ignores stays ignored
            signal.signal(signum, handler)


def _wait_then_clean(child: int) -> int:
    """Wait for the child to end, kill what is left of its group, and return its exit code the way a shell
    reports it (128 + signal when killed). Where it can, the group is killed before the child is reaped, so
    its id cannot have been reused by then."""
    if hasattr(os, "waitid"):
        os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)
        _kill_group(child)
        _, status = os.waitpid(child, 0)
    else:
        _, status = os.waitpid(child, 0)
        _kill_group(child)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def supervise(command: Callable[[], Any]) -> Any:
    """Run `command` in a supervised child process group and exit with its code (see the module docstring).

    Runs `command` directly where there is no fork, or when already supervised (a gem3d started by gem3d).
    """
    if not hasattr(os, "fork") or os.environ.get(SUPERVISED):
        return command()
    sys.stdout.flush()
    sys.stderr.flush()
    watch_end, alive_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(alive_end)
        os.setpgid(0, 0)
        os.environ[SUPERVISED] = "1"
        _die_with_supervisor(watch_end)
        return command()
    os.close(watch_end)
    with contextlib.suppress(PermissionError, ProcessLookupError):
        os.setpgid(child, child)  # also here, so no signal is forwarded before the child has its group
    _forward_signals(child)
    sys.exit(_wait_then_clean(child))
