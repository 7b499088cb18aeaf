"""Prefect tasks for ingest and preprocessing: thin wrappers that add retries, names and logging."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gem3d.config import DataConfig
from gem3d.ingest import CaseOutcome, process_case
from gem3d.io.layouts import CaseRef, DatasetInfo, discover_dataset


@task(name="discover-dataset", cache_policy=NO_CACHE)
def discover_dataset_task(dataset: str | Path, channel: str | int | None) -> DatasetInfo:
    """Detect the dataset layout and list its cases."""
    info = discover_dataset(dataset, channel)
    get_run_logger().info("%s layout, %d cases, %d layout problems", info.layout, len(info.cases), len(info.problems))
    return info


@task(
    name="preprocess-case",
    task_run_name="preprocess-{ref.case_id}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=1,
)
def process_case_task(ref: CaseRef, info: DatasetInfo, config: DataConfig, store: Path, data_hash: str) -> CaseOutcome:
    """Preprocess one case into the staging area; input problems come back as a failed outcome, not a crash."""
    return process_case(ref, info, config, store, data_hash)
