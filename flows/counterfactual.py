"""Counterfactual flow: the (edited) mask of one case with the informed slice of another."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from gem3d.checkpoints import read_bundle_meta
from gem3d.config import config_hash, load_config
from gem3d.synthesis import plan_counterfactual
from tasks.synthesis import run_synthesis


@flow(name="counterfactual")
def counterfactual_flow(
    store: str,
    out: str,
    mask_from: str,
    slice_from: str | None = None,
    edits: list[str] | None = None,
    variants: int = 1,
    config_path: str | None = None,
    workdir: str | None = None,
) -> dict:
    """Mask of `mask_from` (after `edits` such as "remove:1,2,3") with the appearance of `slice_from`."""
    config = load_config(config_path)
    store_path = Path(store).resolve()
    workdir_path = Path(workdir).resolve() if workdir else store_path.parent
    models_dir = workdir_path / "models"
    weights = read_bundle_meta(models_dir / "stage2")["sha256"]
    plans = plan_counterfactual(
        store_path,
        mask_from,
        slice_from,
        edits or [],
        config,
        weights,
        config_hash(config),
        base_seed=config.seed,
        variants=variants,
    )
    return run_synthesis(
        "counterfactual", plans, store_path, models_dir, "stage2", weights, config, Path(out).resolve(), workdir_path
    )
