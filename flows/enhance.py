"""Enhancement flow: K synthetic variants per real training case in one setting (ic, icma, ig, igma).

The story: load the config and the trained models' hashes, plan every volume (ids derived from all
inputs), generate the missing ones in batches over Dask, gate each with the synthetic contract, publish
atomically, rebuild the lineage table, and record it in MLflow.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from gem3d.checkpoints import read_bundle_meta
from gem3d.config import config_hash, load_config
from gem3d.store import read_manifest
from gem3d.synthesis import plan_enhancement
from tasks.synthesis import run_synthesis


def split_case_ids(store: Path, split: str) -> list[str]:
    """Case ids of one split of the store's manifest."""
    manifest = read_manifest(store)
    return sorted(manifest.loc[manifest["split"] == split, "case_id"])


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
    config = load_config(config_path)
    store_path = Path(store).resolve()
    workdir_path = Path(workdir).resolve() if workdir else store_path.parent
    models_dir = workdir_path / "models"
    weights = read_bundle_meta(models_dir / "stage2")["sha256"]
    generator = read_bundle_meta(models_dir / "slicegen")["sha256"] if setting.startswith("ig") else None
    plans = plan_enhancement(
        store_path,
        cases or split_case_ids(store_path, "train"),
        setting,
        per_case,
        config,
        weights,
        config_hash(config),
        base_seed=config.seed,
        generator_sha256=generator,
    )
    return run_synthesis(
        f"enhance-{setting}",
        plans,
        store_path,
        models_dir,
        "stage2",
        weights,
        config,
        Path(out).resolve(),
        workdir_path,
    )
