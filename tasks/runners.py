"""Dask task runners for Prefect: a local cluster by default, an existing cluster by address."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner


def make_task_runner(address: str | None = None, workers: int = 2) -> DaskTaskRunner:
    """Runner for fan-out steps: `address` of a running scheduler, else a local cluster.

    With CUDA and dask-cuda installed the local cluster has one worker per GPU. Otherwise its workers are
    threads of this process (one task each): numpy, zlib and torch release the GIL on real-sized arrays,
    and sampling tasks share the models already loaded here.
    """
    if address:
        return DaskTaskRunner(address=address)
    if torch.cuda.is_available() and importlib.util.find_spec("dask_cuda") is not None:
        return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster", cluster_kwargs={"dashboard_address": None})
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": max(1, workers),
            "threads_per_worker": 1,
            "processes": False,
            "dashboard_address": None,
        }
    )


def threaded_workers(task_runner: object) -> int:
    """How many workers of `task_runner` run as threads of this process (0 when they are processes elsewhere)."""
    if isinstance(task_runner, DaskTaskRunner) and task_runner.cluster_kwargs.get("processes") is False:
        return int(task_runner.cluster_kwargs.get("n_workers", 1)) * int(
            task_runner.cluster_kwargs.get("threads_per_worker", 1)
        )
    return 0


@contextmanager
def share_torch_threads() -> Iterator[None]:
    """While the current flow's tasks run as threads of this process, split torch's intra-op thread budget
    between them (at least one each), so concurrent tasks do not oversubscribe the cores; restore it after."""
    context = FlowRunContext.get()
    workers = threaded_workers(context.task_runner) if context is not None else 0
    if workers <= 1:
        yield
        return
    budget = torch.get_num_threads()
    torch.set_num_threads(max(1, budget // workers))
    try:
        yield
    finally:
        torch.set_num_threads(budget)
