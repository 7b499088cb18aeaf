"""Enhancement flow: K synthetic variants per real training case in one setting (ic, icma, ig, igma).

The story: load the config and the trained models' hashes, plan every volume (ids derived from all
inputs), generate the missing ones in batches over Dask, gate each with the synthetic contract, publish
atomically, rebuild the lineage table, and record it in MLflow.
"""

from __future__ import annotations

from prefect import flow

from gem3d.checkpoints import read_bundle_meta
from gem3d.splits import store_cases_of_split
from gem3d.synthesis import plan_enhancement
from tasks.synthesis import run_synthesis, synthesis_context


@flow(name="enhance")
def enhance_flow(
    store: str,
    out: str,
    setting: str = "ic",
    per_case: int = 1,
    cases: list[str] | None = None,
    config_path: str | None = None,
    workdir: str | None = None,
) -> dict:
    """Generate `per_case` variants of each training case (or `cases`) into the synthetic store `out`."""
    context = synthesis_context(store, config_path, workdir)
    generator = read_bundle_meta(context.models_dir / "slicegen")["sha256"] if setting.startswith("ig") else None
    plans = plan_enhancement(
        context.store,
        cases or store_cases_of_split(context.store, "train"),
        setting,
        per_case,
        context.config,
        context.weights_sha256,
        context.config_hash,
        base_seed=context.config.seed,
        generator_sha256=generator,
    )
    return run_synthesis(f"enhance-{setting}", plans, context, out)
