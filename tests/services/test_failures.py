"""Shared-service failure modes, each with real `gem3d` processes.

- MLflow server down: every tracking command stops within seconds, before any work, with one line naming
  the tracking URI (not minutes of retries after the work is done); a server lost mid-run costs seconds of
  MLflow's own retries, not minutes.
- Two commands on one work folder: the second stops at once with a message naming the holder.
- A SIGKILLed `gem3d` leaves nothing running: Prefect's temporary API server goes with it, its port free.
- Two writers of one synthetic store (two machines sharing it): each volume is published once, the lineage
  table holds every volume and the audit passes, whether the writers are library calls released at the same
  instant or two `gem3d enhance` commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gem3d.lineage import read_lineage_table
from gem3d.splits import store_cases_of_split
from gem3d.store import QUARANTINE
from gem3d.synthetic_store import (
    LINEAGE,
    audit_synthetic_store,
    list_synthetic,
    rebuild_lineage_table,
    write_synthetic,
)
from tasks.locking import LOCK_FILE
from tests.builders import recorded_synthetic_volume
from tests.flows.conftest import MICRO_CONFIG
from tests.services import HOST, REPOSITORY, clean_environment, console_script, free_port, stop_group, tail
from tests.services.micro_work import micro_config, phantoms, trained_work_folder

pytestmark = pytest.mark.slow

FAIL_FAST_SECONDS = 30.0
LOCK_REFUSAL_SECONDS = 20.0
SERVER_START_TIMEOUT = 180.0
GONE_WITHIN_SECONDS = 10.0
ENHANCE_TIMEOUT = 240.0
RACE_VOLUMES = 24
RACE_BATCH = 4


@pytest.fixture(scope="module")
def plain_env(tmp_path_factory) -> dict[str, str]:
    """A clean offline environment without servers (gem3d starts Prefect's temporary one itself), one
    PREFECT_HOME for the module so its database is created once."""
    return clean_environment(tmp_path_factory.mktemp("plain-env"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """4 brain phantoms in Decathlon layout."""
    return phantoms(tmp_path_factory.mktemp("phantoms") / "brain")


def _start(arguments: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """`gem3d ARGUMENTS` in a session of its own, output to `log`."""
    with open(log, "w") as output:
        return subprocess.Popen(
            [console_script("gem3d"), *arguments],
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.contextmanager
def _started(arguments: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    """`_start` for the block; the process and everything it started are stopped after it."""
    process = _start(arguments, env, cwd, log)
    try:
        yield process
    finally:
        stop_group(process)


def _finish(process: subprocess.Popen, deadline: float) -> None:
    """Wait for the process until `deadline` (`time.monotonic()`); fail when it is still running then."""
    try:
        process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        stop_group(process)
        pytest.fail(f"{' '.join(process.args)} still running at its deadline")


def _lines(log: Path) -> list[str]:
    """The non-blank lines a command printed."""
    return [line for line in log.read_text(errors="replace").splitlines() if line.strip()]


def _tracking_commands(root: Path, dataset: Path) -> dict[str, tuple[list[str], Path]]:
    """Every tracking command with arguments that would create a store or work folder: (arguments, that path)."""
    store = root / "absent" / "store.zarr"
    commands = {
        "preprocess": (["--dataset", str(dataset), "--store", str(root / "new" / "store.zarr")], root / "new"),
        "run": (["--dataset", str(dataset), "--workdir", str(root / "run-work")], root / "run-work"),
        "train": (["--store", str(store)], store.parent),
        "enhance": (["--store", str(store), "--out", str(root / "synthetic.zarr")], store.parent),
        "counterfactual": (["--store", str(store), "--out", str(root / "cf.zarr"), "--mask-from", "x"], store.parent),
        "deenhance": (["--store", str(store), "--out", str(root / "de.zarr"), "--reference", "x"], store.parent),
        "evaluate": (
            ["--store", str(store), "--synthetic", str(root / "s.zarr"), "--out", str(root / "report")],
            store.parent,
        ),
    }
    return {name: ([name, *arguments, "--config", MICRO_CONFIG], path) for name, (arguments, path) in commands.items()}


def test_mlflow_down_fails_every_tracking_command_fast_with_one_line_and_no_work(plain_env, dataset, tmp_path):
    uri = f"http://{HOST}:{free_port()}"  # nothing listens there
    env = plain_env | {"MLFLOW_TRACKING_URI": uri}
    commands = _tracking_commands(tmp_path, dataset)
    processes, deadlines = {}, {}
    for name, (arguments, _) in commands.items():
        deadlines[name] = time.monotonic() + FAIL_FAST_SECONDS
        processes[name] = _start(arguments, env, tmp_path, tmp_path / f"{name}.log")
    try:
        for name, process in processes.items():
            _finish(process, deadlines[name])
            log = tmp_path / f"{name}.log"
            assert process.returncode == 2, f"gem3d {name} exited {process.returncode}:\n{tail(log)}"
            assert len(_lines(log)) == 1 and uri in _lines(log)[0], f"gem3d {name} printed:\n{tail(log)}"
            assert not commands[name][1].exists(), f"gem3d {name} created {commands[name][1]} before failing"
    finally:
        for process in processes.values():
            stop_group(process)


LOST_SERVER_CALL = """
import sys
from tasks.environment import apply_offline_defaults

apply_offline_defaults()
import mlflow

mlflow.set_tracking_uri(sys.argv[1])
try:
    mlflow.get_experiment_by_name("gem3d")
except mlflow.exceptions.MlflowException:
    print("gave up")
"""


def test_an_mlflow_call_to_a_server_lost_mid_run_gives_up_within_seconds(plain_env, tmp_path):
    uri = f"http://{HOST}:{free_port()}"  # gone after the preflight: MLflow's own retries are all that is left
    started = time.monotonic()
    try:
        finished = subprocess.run(
            [sys.executable, "-c", LOST_SERVER_CALL, uri],
            cwd=tmp_path,
            env=plain_env,
            capture_output=True,
            text=True,
            timeout=2 * FAIL_FAST_SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"MLflow still retrying {uri} after {2 * FAIL_FAST_SECONDS:.0f} s")
    assert finished.stdout.strip() == "gave up", finished.stderr[-3000:]
    assert time.monotonic() - started < FAIL_FAST_SECONDS


def _holding(work: Path) -> bool:
    """Whether a command has the work folder: its lock names a holder, or (without locks) work has begun."""
    lock = work / LOCK_FILE
    begun = work.is_dir() and any(path.name != LOCK_FILE for path in work.iterdir())
    return begun or (lock.exists() and bool(lock.read_text().strip()))


def _wait_for(condition, timeout: float, process: subprocess.Popen, log: Path) -> None:
    """Poll `condition` until true; fail when the process ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"{' '.join(process.args)} ended early:\n{tail(log)}"
        assert time.monotonic() < deadline, f"not reached within {timeout:.0f} s:\n{tail(log)}"
        time.sleep(0.1)


def _work_folder_commands(work: Path, dataset: Path) -> dict[str, list[str]]:
    """Commands that write into `work`: a whole run, preprocessing into its store, enhancement of that store."""
    store, config = str(work / "store.zarr"), ["--config", MICRO_CONFIG]
    return {
        "run": ["run", "--dataset", str(dataset), "--workdir", str(work), *config],
        "preprocess": ["preprocess", "--dataset", str(dataset), "--store", store, *config],
        "enhance": ["enhance", "--store", store, "--out", str(work / "synthetic.zarr"), *config],
    }


def test_a_second_command_on_a_busy_work_folder_stops_at_once(plain_env, dataset, tmp_path):
    work = tmp_path / "work"
    commands = _work_folder_commands(work, dataset)
    first_log = tmp_path / "first.log"
    with _started(commands["run"], plain_env, tmp_path, first_log) as first:
        _wait_for(lambda: _holding(work), SERVER_START_TIMEOUT, first, first_log)
        refused_by = time.monotonic() + LOCK_REFUSAL_SECONDS
        logs = {name: tmp_path / f"second-{name}.log" for name in commands}
        second = {name: _start(arguments, plain_env, tmp_path, logs[name]) for name, arguments in commands.items()}
        try:
            for name, process in second.items():
                _finish(process, refused_by)
                assert process.returncode == 2, f"second gem3d {name} exited {process.returncode}:\n{tail(logs[name])}"
                (line,) = _lines(logs[name])
                assert str(work) in line and "in use by another gem3d command (gem3d run, pid" in line
        finally:
            for process in second.values():
                stop_group(process)
        assert first.poll() is None, f"the first run was disturbed:\n{tail(first_log)}"


def _session_processes(session: int) -> list[psutil.Process]:
    """Live (not zombie) processes of a session."""
    found = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getsid(process.pid) == session and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def _prefect_server(session: int) -> psutil.Process | None:
    """Prefect's temporary API server (uvicorn) in the session, once it is there."""
    for process in _session_processes(session):
        with contextlib.suppress(psutil.Error):
            if "uvicorn" in " ".join(process.cmdline()):
                return process
    return None


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HOST, port)) == 0


def test_a_sigkilled_gem3d_leaves_no_process_behind_and_frees_the_server_port(plain_env, dataset, tmp_path):
    log = tmp_path / "preprocess.log"
    arguments = [
        "preprocess",
        "--dataset",
        str(dataset),
        "--store",
        str(tmp_path / "store.zarr"),
        "--config",
        MICRO_CONFIG,
    ]
    process = _start(arguments, plain_env, tmp_path, log)
    try:
        _wait_for(lambda: _prefect_server(process.pid) is not None, SERVER_START_TIMEOUT, process, log)
        server = _prefect_server(process.pid)
        port = int(re.search(r"--port (\d+)", " ".join(server.cmdline())).group(1))
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + GONE_WITHIN_SECONDS
        while (_session_processes(process.pid) or _listening(port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [" ".join(p.cmdline()[:6]) for p in _session_processes(process.pid)]
        assert left == [], f"still running after gem3d was killed: {left}"
        assert not _listening(port), f"Prefect's server port {port} is still open"
    finally:
        for leftover in _session_processes(process.pid):
            with contextlib.suppress(psutil.Error):
                leftover.kill()


def _source_files(folder: Path) -> dict[str, Path]:
    """A source image, label and checkpoint that every race volume's record names (the audit hashes them)."""
    return {
        "image": folder / "case_0_0000.nii.gz",
        "label": folder / "case_0.nii.gz",
        "stage2": folder / "model.safetensors",
    }


def _write_source_files(folder: Path) -> None:
    """Write the `_source_files` once, before the writers start (they only read them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(_source_files(folder).values()):
        path.write_bytes(bytes([index]) * 1024)


def publish_in_step(store: str, files: str, name: str, ready: str, go: str) -> None:
    """One writer of the race (run as its own process): build the volumes, say so, wait for `go`, publish
    them batch by batch with a lineage-table rebuild after each, as enhancement runs do; print its ids."""
    volumes = [recorded_synthetic_volume(index, _source_files(Path(files)), "ic") for index in range(RACE_VOLUMES)]
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.001)
    written = []
    for first in range(0, RACE_VOLUMES, RACE_BATCH):
        written += write_synthetic(store, volumes[first : first + RACE_BATCH], flow_run_id=name)
        rebuild_lineage_table(store)
    print(json.dumps(written))


def test_two_writers_released_together_publish_each_volume_once_with_a_complete_table(plain_env, tmp_path):
    store, files, go = tmp_path / "synthetic.zarr", tmp_path / "real", tmp_path / "go"
    _write_source_files(files)
    env = plain_env | {"PYTHONPATH": os.pathsep.join(filter(None, (plain_env.get("PYTHONPATH"), str(REPOSITORY))))}
    writers = {}
    for name in ("writer-a", "writer-b"):
        arguments = (str(store), str(files), name, str(tmp_path / name), str(go))
        call = f"from tests.services.test_failures import publish_in_step; publish_in_step{arguments!r}"
        writers[name] = subprocess.Popen(
            [sys.executable, "-c", call],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / name).exists() for name in writers) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        outputs = {name: process.communicate(timeout=120) for name, process in writers.items()}
    finally:
        for process in writers.values():
            stop_group(process)
    for name, process in writers.items():
        assert process.returncode == 0, f"{name} failed:\n{outputs[name][1][-3000:]}"
    written = {name: json.loads(outputs[name][0].splitlines()[-1]) for name in writers}
    published = list_synthetic(store)
    assert len(published) == RACE_VOLUMES
    assert sorted(written["writer-a"] + written["writer-b"]) == published, "a volume was published twice"
    assert sorted(record.synthetic_id for record in read_lineage_table(store / LINEAGE)) == published
    report = audit_synthetic_store(store)
    assert report.passed, [problem.reason for problem in report.problems]


@pytest.fixture(scope="module")
def trained(servers, tmp_path_factory) -> Path:
    """The session's trained micro work folder (tracked on the MLflow server)."""
    return trained_work_folder(tmp_path_factory.getbasetemp(), _team_env(servers))


def _team_env(servers) -> dict[str, str]:
    """The environment of a team machine: the shared Prefect server and MLflow tracking server."""
    return servers.prefect_env | {"MLFLOW_TRACKING_URI": servers.mlflow_uri}


def _summary_count(log: Path, field: str) -> int:
    """A count from the synthesis summary table a `gem3d enhance` printed."""
    return int(re.search(rf"│ {field}\s+│ (\d+)", log.read_text()).group(1))


def test_two_enhance_commands_sharing_a_store_publish_each_volume_once(servers, trained, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(trained, work, ignore=shutil.ignore_patterns("phantoms"))
    config = micro_config(tmp_path, volumes_per_batch=2)
    out = work / "synthetic.zarr"
    arguments = [
        "enhance",
        "--store",
        str(work / "store.zarr"),
        "--out",
        str(out),
        "--per-case",
        "2",
        "--config",
        config,
        "--workdir",
        str(work),
        "--workers",
        "1",
    ]
    logs = {name: tmp_path / f"{name}.log" for name in ("first", "second")}
    with (
        _started(arguments, _team_env(servers), tmp_path, logs["first"]) as first,
        _started(arguments, _team_env(servers), tmp_path, logs["second"]) as second,
    ):
        for process, log in ((first, logs["first"]), (second, logs["second"])):
            _finish(process, time.monotonic() + ENHANCE_TIMEOUT)
            assert process.returncode == 0, tail(log)
    planned = 2 * len(store_cases_of_split(work / "store.zarr", "train"))
    published = list_synthetic(out)
    assert len(published) == planned == _summary_count(logs["first"], "planned")
    assert sum(_summary_count(log, "written") for log in logs.values()) == planned, "a volume was published twice"
    assert sorted(record.synthetic_id for record in read_lineage_table(out / LINEAGE)) == published
    assert not (out / QUARANTINE).exists() or json.loads((out / QUARANTINE).read_text()) == []
    report = audit_synthetic_store(out)
    assert report.passed, [problem.reason for problem in report.problems]
