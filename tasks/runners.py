"""Dask task runners for Prefect: a local cluster by default, an existing cluster by address."""

from __future__ import annotations

import importlib.util

import torch
from prefect_dask import DaskTaskRunner


def make_task_runner(address: str | None = None, workers: int = 2) -> DaskTaskRunner:
    """Runner for fan-out steps: `address` of a running scheduler, else a local cluster.

    With CUDA and dask-cuda installed the local cluster has one worker per GPU.
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
