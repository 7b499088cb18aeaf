"""De-enhancement flow: regenerate every case from its own mask in one reference appearance.

Reports the spread of per-case foreground intensity statistics before (real cases) and after (their
regenerated versions), printed by the CLI and logged to MLflow.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow

from gem3d.checkpoints import read_bundle_meta
from gem3d.config import config_hash, load_config
from gem3d.normalize import deenhancement_report, foreground_intensity_stats
from gem3d.store import list_cases, read_case
from gem3d.synthesis import plan_deenhancement
from gem3d.synthetic_store import read_synthetic, synthetic_exists
from tasks.synthesis import run_synthesis
from tasks.tracking import tracked_run


@flow(name="deenhance")
def deenhance_flow(
    store: str,
    out: str,
    reference: list[str],
    cases: list[str] | None = None,
    config_path: str | None = None,
    workdir: str | None = None,
) -> dict:
    """Regenerate `cases` (default: all) with the reference slice(s) "CASE[:SLICE]"; report the spreads."""
    config = load_config(config_path)
    store_path = Path(store).resolve()
    workdir_path = Path(workdir).resolve() if workdir else store_path.parent
    models_dir = workdir_path / "models"
    weights = read_bundle_meta(models_dir / "stage2")["sha256"]
    case_ids = cases or list_cases(store_path)
    plans = plan_deenhancement(store_path, case_ids, reference, config, weights, config_hash(config), config.seed)
    out_path = Path(out).resolve()
    outcome = run_synthesis(
        "deenhance", plans, store_path, models_dir, "stage2", weights, config, out_path, workdir_path
    )
    before = [foreground_intensity_stats(read_case(store_path, p.source_case_id)[0]) for p in plans]
    after = [
        foreground_intensity_stats(read_synthetic(out_path, p.synthetic_id)[0])
        for p in plans
        if synthetic_exists(out_path, p.synthetic_id)
    ]
    report = deenhancement_report(before, after)
    with tracked_run("deenhance-spread", workdir_path, config):
        mlflow.log_dict(report, "deenhancement_spread.json")
    return outcome | {"spread": report}
