"""Counterfactual flow: the (edited) mask of one case with the informed slice of another."""

from __future__ import annotations

from prefect import flow

from gem3d.synthesis import plan_counterfactual
from tasks.synthesis import run_synthesis, synthesis_context


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
    context = synthesis_context(store, config_path, workdir)
    plans = plan_counterfactual(
        context.store,
        mask_from,
        slice_from,
        edits or [],
        context.config,
        context.weights_sha256,
        context.config_hash,
        base_seed=context.config.seed,
        variants=variants,
    )
    return run_synthesis("counterfactual", plans, context, out)
