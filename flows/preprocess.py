"""Ingest + preprocessing flow: raw NIfTI dataset -> validated Zarr store with a manifest.

The story: discover the cases, preprocess each one in parallel into a staging area, validate the raw
inventory and the staged cases with their data contracts, publish what passed, quarantine the rest
with file and reason, write the manifest (a case keeps the split an earlier run gave it, so a growing
dataset never reshuffles), and track it all in MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pandas as pd
from prefect import flow, get_run_logger, unmapped

from data_contracts import preprocessed_contract, raw_contract
from gem3d.config import config_hash, load_config, section_hash
from gem3d.ingest import build_manifest, declared_label_values
from gem3d.lineage import provenance
from gem3d.splits import assign_splits, store_splits
from gem3d.store import (
    MANIFEST,
    QUARANTINE,
    clear_staging,
    discard_staged,
    init_store,
    publish_case,
    write_json_atomic,
    write_table_atomic,
)
from tasks.preprocessing import discover_dataset_task, process_case_task
from tasks.runners import make_task_runner, share_torch_threads
from tasks.tracking import tracked_run, use_tracking


def _quarantine_records(outcomes, layout_problems, contract_failures: dict[str, list[str]]) -> list[dict]:
    records = [{"case_id": None, **problem.as_record()} for problem in layout_problems]
    for outcome in outcomes:
        if outcome.error is not None:
            records.append({"case_id": outcome.case_id, **outcome.error})
        elif outcome.case_id in contract_failures:
            reason = "; ".join(contract_failures[outcome.case_id])
            records.append(
                {
                    "case_id": outcome.case_id,
                    "path": outcome.inventory["image_path"],
                    "kind": "contract",
                    "reason": reason,
                }
            )
    return records


def _failures_by_case(*results) -> dict[str, list[str]]:
    failures: dict[str, list[str]] = {}
    for result in results:
        for failure in result.failures:
            if failure.get("case_id"):
                failures.setdefault(failure["case_id"], []).append(f"{result.contract}: {failure['reason']}")
    return failures


@flow(name="preprocess", log_prints=False)
def preprocess_flow(
    dataset: str,
    store: str,
    config_path: str | None = None,
    channel: str | None = None,
    workdir: str | None = None,
) -> dict:
    """Preprocess `dataset` into the Zarr `store`; returns a summary (counts, paths, contract outcomes)."""
    logger = get_run_logger()
    started = time.perf_counter()
    config = load_config(config_path)
    store_path = Path(store).resolve()
    workdir_path = Path(workdir).resolve() if workdir else store_path.parent
    use_tracking(workdir_path)  # a tracking server that is down stops the flow now, not after the work
    data_hash = section_hash(config, "data")
    info = discover_dataset_task(dataset, channel if channel is not None else config.data.channel)
    declared = declared_label_values(info)
    init_store(
        store_path,
        {
            "config_hash": config_hash(config),
            "provenance": provenance(config),
            "data_config_hash": data_hash,
            "modality": info.modality,
            "labels": {str(k): v for k, v in sorted(info.labels.items())},
            "dataset": str(info.root),
            "layout": info.layout,
            "window_length": config.data.window_length,
            "in_plane_size": config.data.in_plane_size,
        },
    )
    clear_staging(store_path)
    earlier_splits = store_splits(store_path)

    with share_torch_threads():
        futures = process_case_task.map(
            info.cases, unmapped(info), unmapped(config.data), unmapped(store_path), unmapped(data_hash)
        )
        outcomes = [future.result() for future in futures]

    inventory = pd.DataFrame([outcome.inventory for outcome in outcomes])
    raw_result = raw_contract(inventory, set(declared) if info.labels else set(range(256)))
    candidates = [o for o in outcomes if o.status in ("staged", "skipped")]
    splits = assign_splits(
        [o.case_id for o in candidates],
        config.data.split_fractions,
        config.data.split_seed,
        given={ref.case_id: ref.split for ref in info.cases},
        previous=earlier_splits,
    )
    candidate_table = pd.DataFrame(
        [
            {
                "case_id": o.case_id,
                "split": splits[o.case_id],
                "config_hash": data_hash,
                "image_sha256": o.inventory["image_sha256"],
                "label_sha256": o.inventory["label_sha256"],
                **o.statistics,
            }
            for o in candidates
        ],
        columns=["case_id"] if not candidates else None,
    )
    num_classes = len(declared) if info.labels else 256
    staged_result = preprocessed_contract(
        candidate_table,
        config.data.in_plane_size,
        config.data.window_length,
        num_classes,
    )
    failures = _failures_by_case(raw_result, staged_result)

    published: list[str] = []
    for outcome in candidates:
        if outcome.case_id in failures:
            if outcome.staged is not None:
                discard_staged(outcome.staged)
            continue
        if outcome.staged is not None:
            publish_case(store_path, outcome.case_id, outcome.staged)
        published.append(outcome.case_id)

    quarantine = _quarantine_records(outcomes, info.problems, failures)
    write_json_atomic(store_path / QUARANTINE, quarantine)
    manifest = build_manifest(store_path, sorted(published), splits) if published else pd.DataFrame()
    if published:
        write_table_atomic(store_path / MANIFEST, manifest)
    validation_dir = store_path / "validation"
    raw_result.save(validation_dir / "raw.json")
    staged_result.save(validation_dir / "preprocessed.json")

    summary = {
        "store": str(store_path),
        "layout": info.layout,
        "cases": len(info.cases) + len(info.problems),
        "processed": sum(o.status == "staged" and o.case_id in published for o in outcomes),
        "skipped": sum(o.status == "skipped" and o.case_id in published for o in outcomes),
        "published": len(published),
        "quarantined": len(quarantine),
        "quarantine": quarantine,
        "seconds": round(time.perf_counter() - started, 2),
        "config_hash": config_hash(config),
    }
    with tracked_run("preprocess", workdir_path, config) as _run_id:
        mlflow.log_metrics(
            {
                "cases_ok": summary["published"],
                "cases_processed": summary["processed"],
                "cases_skipped": summary["skipped"],
                "quarantined": summary["quarantined"],
                "seconds": summary["seconds"],
            }
        )
        for path in (
            store_path / MANIFEST,
            store_path / QUARANTINE,
            validation_dir / "raw.json",
            validation_dir / "preprocessed.json",
        ):
            if path.exists():
                mlflow.log_artifact(str(path), artifact_path="preprocess")
    logger.info(
        "published %d cases (%d processed, %d unchanged), quarantined %d",
        summary["published"],
        summary["processed"],
        summary["skipped"],
        summary["quarantined"],
    )
    return summary


def run_preprocess(
    dataset: str,
    store: str,
    config_path: str | None,
    channel: str | None,
    workdir: str | None,
    dask_address: str | None,
    workers: int,
) -> dict:
    """Entry point for the CLI: the flow with a Dask runner (local cluster or `dask_address`)."""
    runner = make_task_runner(dask_address, workers)
    return preprocess_flow.with_options(task_runner=runner)(dataset, store, config_path, channel, workdir)
