"""An external Dask cluster started from the command line, as a team runs one, losing a worker mid-sampling.

`dask scheduler` and two `dask worker --nthreads 1 --no-nanny` processes on free local ports, pointed at the
session's Prefect server. Preprocessing and sampling go through `gem3d ... --dask-address`; one worker is
SIGKILLed while it runs a sampling batch. The job still completes on the other worker, and the synthetic
store holds every planned volume exactly once, each passing the synthetic contract, with a complete lineage
table that the audit proves.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from distributed import Client

from data_contracts import synthetic_contract
from gem3d.config import load_config
from gem3d.label_intensity import real_label_mean_ranges
from gem3d.lineage import read_lineage_table
from gem3d.splits import store_cases_of_split
from gem3d.store import QUARANTINE, list_cases
from gem3d.synthesis import SynthesisPlan, SyntheticVolume
from gem3d.synthetic_store import (
    LINEAGE,
    audit_synthetic_store,
    list_synthetic,
    read_synthetic,
    synthetic_attributes,
    synthetic_row,
)
from tests.flows.conftest import MICRO_CONFIG
from tests.services import HOST, console_script, free_port, run_command, stop_group, tail
from tests.services.micro_work import micro_config, phantoms, trained_work_folder

pytestmark = pytest.mark.slow

WORKERS = ("worker-a", "worker-b")
CLUSTER_TIMEOUT = 120.0
COMMAND_TIMEOUT = 240.0
PER_CASE = 2


@dataclass(frozen=True)
class Cluster:
    """The scheduler's address, a client of it, and each worker's process by name."""

    address: str
    client: Client
    workers: dict[str, subprocess.Popen]
    logs: Path

    def worker_names(self) -> dict[str, str]:
        """Name by address of each worker the scheduler knows now."""
        return {address: info["name"] for address, info in self.client.scheduler_info()["workers"].items()}

    def busy_worker(self) -> str | None:
        """The name of a worker running a task now (while sampling, a batch: nothing else is submitted)."""
        names = self.worker_names()
        return next((names[address] for address, keys in self.client.processing().items() if keys), None)


def _team_env(servers) -> dict[str, str]:
    """A team machine's environment: the shared Prefect server and MLflow tracking server."""
    return servers.prefect_env | {"MLFLOW_TRACKING_URI": servers.mlflow_uri}


def _launch(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as output:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture(scope="module")
def cluster(servers, tmp_path_factory) -> Iterator[Cluster]:
    """`dask scheduler` and two single-thread workers without nannies (a killed worker stays dead), started
    from the command line in folders of their own; every process they started is stopped after the module."""
    root = tmp_path_factory.mktemp("dask-cluster")
    env = _team_env(servers)
    address = f"tcp://{HOST}:{free_port()}"
    processes = []
    try:
        scheduler_command = [console_script("dask"), "scheduler", "--host", HOST, "--port", address.rsplit(":", 1)[1]]
        processes.append(_launch([*scheduler_command, "--no-dashboard"], env, root, root / "scheduler.log"))
        workers = {}
        for name in WORKERS:
            command = [console_script("dask"), "worker", address, "--name", name, "--nthreads", "1", "--no-nanny"]
            command += ["--no-dashboard", "--host", HOST, "--preload", "tasks.synthesis"]
            workers[name] = _launch(command, env, root, root / f"{name}.log")
            processes.append(workers[name])
        with Client(address, timeout=CLUSTER_TIMEOUT) as client:
            client.wait_for_workers(len(WORKERS), timeout=CLUSTER_TIMEOUT)
            yield Cluster(address, client, workers, root)
    finally:
        for process in reversed(processes):
            stop_group(process)


def _row_read_back(store: Path, synthetic_id: str) -> dict:
    """The synthetic contract's row of a published volume, computed from what is on disk."""
    image, mask, record = read_synthetic(store, synthetic_id)
    plan = SynthesisPlan.model_validate(synthetic_attributes(store, synthetic_id)["plan"])
    return synthetic_row(SyntheticVolume(plan, image, mask, record))


def _kill_a_busy_worker(cluster: Cluster, enhance: subprocess.Popen, out: Path, log: Path) -> str:
    """Once sampling has published a volume, SIGKILL a worker while it runs a batch; its name."""
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while True:
        assert enhance.poll() is None, f"sampling ended before a worker could be killed mid-batch:\n{tail(log)}"
        assert time.monotonic() < deadline, f"no batch to interrupt:\n{tail(log)}"
        busy = cluster.busy_worker() if list_synthetic(out) else None
        if busy is not None:
            break
        time.sleep(0.05)
    cluster.workers[busy].send_signal(signal.SIGKILL)
    cluster.workers[busy].wait()
    return busy


def test_sampling_survives_a_lost_worker_with_every_volume_once(cluster, servers, tmp_path_factory, tmp_path):
    env = _team_env(servers)
    work = tmp_path / "work"
    dataset = phantoms(tmp_path / "phantoms")
    store = work / "store.zarr"
    preprocess = ["preprocess", "--dataset", str(dataset), "--store", str(store), "--config", MICRO_CONFIG]
    run_command(
        [console_script("gem3d"), *preprocess, "--dask-address", cluster.address],
        env,
        tmp_path,
        tmp_path / "preprocess.log",
        COMMAND_TIMEOUT,
    )
    assert len(list_cases(store)) == 4
    shutil.copytree(trained_work_folder(tmp_path_factory.getbasetemp(), env) / "models", work / "models")

    config = micro_config(tmp_path, volumes_per_batch=1)
    out = work / "synthetic.zarr"
    log = tmp_path / "enhance.log"
    enhance = [console_script("gem3d"), "enhance", "--store", str(store), "--out", str(out), "--config", config]
    enhance += ["--per-case", str(PER_CASE), "--workdir", str(work), "--dask-address", cluster.address]
    process = _launch(enhance, env, tmp_path, log)
    try:
        killed = _kill_a_busy_worker(cluster, process, out, log)
        process.wait(COMMAND_TIMEOUT)
    finally:
        stop_group(process)
    assert process.returncode == 0, f"sampling did not complete after {killed} was lost:\n{tail(log)}"
    assert sorted(cluster.worker_names().values()) == sorted(set(WORKERS) - {killed})

    planned = PER_CASE * len(store_cases_of_split(store, "train"))
    published = list_synthetic(out)
    assert len(published) == planned
    assert sorted(record.synthetic_id for record in read_lineage_table(out / LINEAGE)) == published
    assert not (out / QUARANTINE).exists() or json.loads((out / QUARANTINE).read_text()) == []
    limits = load_config(config).synthetic_contract
    rows = pd.DataFrame([_row_read_back(out, synthetic_id) for synthetic_id in published])
    result = synthetic_contract(rows, label_mean_ranges=real_label_mean_ranges(store), limits=limits)
    assert result.passed, result.failures
    report = audit_synthetic_store(out)
    assert report.passed, [problem.reason for problem in report.problems]
