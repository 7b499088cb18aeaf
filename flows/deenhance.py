"""De-enhancement flow: regenerate every case from its own mask in one reference appearance.

Reports the spread of per-case foreground intensity statistics before (real cases) and after (their
regenerated versions), printed by the CLI and logged to MLflow.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow

from gem3d.normalize import deenhancement_report, foreground_intensity_stats
from gem3d.store import list_cases, read_case
from gem3d.synthesis import plan_deenhancement
from gem3d.synthetic_store import read_synthetic, synthetic_exists
from tasks.synthesis import run_synthesis, synthesis_context
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
    context = synthesis_context(store, config_path, workdir)
    plans = plan_deenhancement(
        context.store,
        cases or list_cases(context.store),
        reference,
        context.config,
        context.weights_sha256,
        context.config_hash,
        context.config.seed,
    )
    out_path = Path(out).resolve()
    outcome = run_synthesis("deenhance", plans, context, out_path)
    published = [plan for plan in plans if synthetic_exists(out_path, plan.synthetic_id)]
    before = [foreground_intensity_stats(read_case(context.store, plan.source_case_id)[0]) for plan in published]
    after = [foreground_intensity_stats(read_synthetic(out_path, plan.synthetic_id)[0]) for plan in published]
    report = deenhancement_report(before, after)
    with tracked_run("deenhance-spread", context.workdir, context.config):
        mlflow.log_dict(report, "deenhancement_spread.json")
    return outcome | {"spread": report}
