"""Fan-out runners: in-process workers split torch's thread budget instead of oversubscribing the cores."""

from __future__ import annotations

import pytest
import torch
from prefect import flow, task
from prefect_dask import DaskTaskRunner

from tasks.runners import make_task_runner, share_torch_threads, threaded_workers


@task
def threads_seen(index: int) -> int:
    return torch.get_num_threads()


@flow
def fan_out(count: int) -> list[int]:
    with share_torch_threads():
        return [future.result() for future in threads_seen.map(range(count))]


@pytest.fixture
def budget_of_four():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield 4
    torch.set_num_threads(before)


@pytest.mark.parametrize(("workers", "expected"), [(1, 4), (2, 2), (3, 1)])
def test_threaded_workers_share_the_budget_and_it_is_restored(budget_of_four, workers, expected):
    seen = fan_out.with_options(task_runner=make_task_runner(None, workers))(4)
    assert seen == [expected] * 4
    assert torch.get_num_threads() == budget_of_four


def test_only_workers_inside_this_process_count(budget_of_four):
    assert threaded_workers(make_task_runner(None, 3)) == 3
    assert threaded_workers(DaskTaskRunner(address="tcp://127.0.0.1:8786")) == 0
    processes = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "processes": True})
    assert threaded_workers(processes) == 0
    with share_torch_threads():
        assert torch.get_num_threads() == budget_of_four
