"""Evaluation flow: does the synthetic data look right, hold together in 3D, and help?

The story: skip when nothing the report depends on changed; otherwise let the library evaluate the current
synthetic volumes (`gem3d.evaluation.evaluate`), giving it the one step that needs Prefect: regenerating the
held-out test cases with the synthesis tasks. Render the self-contained HTML report from the result and log
the metrics, the report and its figures to MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger

from gem3d.config import load_config
from gem3d.evaluation import RegenerationArm, evaluate, evaluation_key
from gem3d.lineage import provenance
from gem3d.report import evaluation_report_inputs, render_report
from gem3d.store import write_json_atomic
from gem3d.views import save_png
from tasks.progress import ProgressReporter
from tasks.synthesis import run_synthesis, synthesis_context
from tasks.tracking import tracked_run

EVALUATION_RECORD = "evaluation.json"


@flow(name="evaluate")
def evaluate_flow(
    store: str,
    synthetic: str,
    out: str,
    config_path: str | None = None,
    workdir: str | None = None,
    feature_extractor: str | None = None,
) -> dict:
    """Evaluate the synthetic store against the real one and write `out/report.html`."""
    logger = get_run_logger()
    config = load_config(config_path)
    store_path, synthetic_path, out_path = Path(store).resolve(), Path(synthetic).resolve(), Path(out).resolve()
    workdir_path = Path(workdir).resolve() if workdir else store_path.parent
    models_dir = workdir_path / "models"
    key = evaluation_key(store_path, synthetic_path, models_dir, config, feature_extractor)
    previous = _previous_evaluation(out_path, key)
    if previous is not None:
        logger.info("inputs unchanged (%s): report %s reused", key, previous["report"])
        return previous | {"skipped": True}
    evaluation_store = workdir_path / "evaluation.zarr"

    def regenerate(arm: RegenerationArm) -> None:
        context = synthesis_context(str(store_path), arm.config, str(workdir_path), arm.role)
        run_synthesis(arm.step, arm.plans, context, evaluation_store)

    with ProgressReporter("evaluation", 1, "phases") as progress:
        result = evaluate(
            store_path,
            synthetic_path,
            config,
            models_dir,
            evaluation_store,
            regenerate,
            feature_extractor,
            lambda done, total, phase: progress.update(done, status=phase, total=total),
        )
    logger.info(result.selection_note())

    origin = provenance(config)
    run_info = {name.replace("_", " "): str(value) for name, value in origin.items() if name != "config_hash"}
    run_info |= {"real store": str(store_path), "synthetic store": str(synthetic_path)}
    report = render_report(
        out_path, evaluation_report_inputs(result, "gem3d evaluation", origin["config_hash"], run_info)
    )
    for index, figure in enumerate(result.orthogonal_views + result.slice_grids):
        save_png(figure.image, out_path / "figures" / f"{index:02d}.png")
    metrics = result.metrics()
    with tracked_run("evaluate", workdir_path, config):
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(report), artifact_path="report")
        mlflow.log_artifacts(str(out_path / "figures"), artifact_path="report/figures")
    logger.info("report written to %s", report)
    outcome = {
        "report": str(report),
        "metrics": metrics,
        "evaluation_key": key,
        "provenance": origin,
        "evaluated": len(result.evaluated),
        "left_out": len(result.left_out),
    }
    write_json_atomic(out_path / EVALUATION_RECORD, outcome)
    return outcome | {"skipped": False}


def _previous_evaluation(out: Path, key: str) -> dict | None:
    record = out / EVALUATION_RECORD
    if not record.exists():
        return None
    previous = json.loads(record.read_text())
    return previous if previous.get("evaluation_key") == key and Path(previous["report"]).exists() else None
