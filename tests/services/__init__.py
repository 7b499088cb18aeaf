"""Real services for tests: processes started in their own process group, with a private home, temp and
working folder, on free local ports, and stopped as a whole group (children included) whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

HOST = "127.0.0.1"
REPOSITORY = Path(__file__).resolve().parents[2]
TOOL_STATE_PREFIXES = ("PREFECT_", "MLFLOW_", "GX_", "XDG_", "GEM3D_", "DASK_")
OFFLINE = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
STOP_GRACE_SECONDS = 10.0


def console_script(name: str) -> str:
    """The console script `name` installed next to this interpreter (prefect, mlflow, dask, gem3d)."""
    script = Path(sys.executable).with_name(name)
    assert script.exists(), f"{name} is not installed next to {sys.executable}"
    return str(script)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def clean_environment(root: Path) -> dict[str, str]:
    """This environment without any Prefect, MLflow, GX, Dask or gem3d state, offline, with its own home, temp
    folder and PREFECT_HOME under `root`."""
    folders = {name: root / name for name in ("home", "tmp", "prefect-home")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    kept = {name: value for name, value in os.environ.items() if not name.startswith(TOOL_STATE_PREFIXES)}
    return (
        kept
        | OFFLINE
        | {
            "HOME": str(folders["home"]),
            "TMPDIR": str(folders["tmp"]),
            "PREFECT_HOME": str(folders["prefect-home"]),
        }
    )


def stop_group(process: subprocess.Popen) -> None:
    """Stop the process, its process group and every descendant (some start their own session, as Prefect's
    flow-run processes do): SIGTERM first, SIGKILL after a grace period for whatever is left."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    for descendant in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            descendant.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_GRACE_SECONDS)
    _, alive = psutil.wait_procs(descendants, timeout=STOP_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for descendant in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            descendant.kill()
    process.wait(STOP_GRACE_SECONDS)


def tail(path: Path, characters: int = 4000) -> str:
    """The end of a log file, for assertion messages."""
    return path.read_text(errors="replace")[-characters:] if path.exists() else f"({path} not written)"


def run_command(
    command: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess:
    """Run a command in its own process group to completion (the group is stopped on timeout or error);
    its output goes to `log`, and a non-zero exit fails the test with the log's end."""
    with open(log, "w") as output:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=dict(env), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            returncode = f"nothing (still running after {timeout:.0f} s)"
        finally:
            stop_group(process)
    assert returncode == 0, f"{' '.join(command)} exited with {returncode}:\n{tail(log)}"
    return subprocess.CompletedProcess(list(command), returncode, log.read_text(errors="replace"))


@dataclass
class Service:
    """A server process (its own process group) and the URL that answers when it is ready."""

    name: str
    process: subprocess.Popen
    health_url: str
    log: Path

    def wait_ready(self, ready: Callable[[httpx.Response], bool], timeout: float) -> None:
        """Poll the health URL until `ready` accepts the answer; fail with the log's end if the process exits
        or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{self.name} exited early:\n{tail(self.log)}"
            try:
                if ready(httpx.get(self.health_url, timeout=2.0)):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.name} not ready after {timeout:.0f} s:\n{tail(self.log)}")

    def stop(self) -> None:
        """Stop the server and every process it started."""
        stop_group(self.process)


def launch(name: str, command: Sequence[str], env: Mapping[str, str], cwd: Path, health_url: str) -> Service:
    """Start a server in a new process group, its output in `<cwd>/<name>.log`; not yet waited for."""
    log = cwd / f"{name}.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=dict(env), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Service(name, process, health_url, log)
