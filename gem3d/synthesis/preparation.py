"""Preparing a plan for sampling: its checked source mask, its edits applied, and its informed slice."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gem3d.config import Config
from gem3d.editing import AppliedEdit, PasteLesion, ShiftLabels, apply_edits, apply_geometry, validate_mask
from gem3d.errors import InvalidEditError, MissingFileError, StoreError
from gem3d.lineage import SourceFile, sha256_array
from gem3d.sampling.informed import InformedSlice, chosen_slice, fixed_slice, generate_slices
from gem3d.store import case_attributes, open_case_arrays, open_case_outline
from gem3d.synthesis.models import LoadedModels
from gem3d.synthesis.plans import SynthesisPlan


@dataclass
class PreparedPlan:
    """A plan with its (edited) mask, edit records, informed slice and the real files it read."""

    plan: SynthesisPlan
    mask: np.ndarray  # (Z, H, W) uint8
    outline: np.ndarray  # (Z, H, W) uint8 0/1: the mask case's anatomy outline, rotated and flipped with the mask
    applied: list[AppliedEdit]
    informed: InformedSlice | None
    source_files: list[SourceFile]


def _case_files(store: str | Path, case_id: str, roles: dict[str, str]) -> list[SourceFile]:
    """The case's raw files (from the store attributes) as lineage sources; `roles` maps file kind -> role."""
    attributes = case_attributes(store, case_id)
    return [
        SourceFile(path=attributes["source_files"][kind], sha256=attributes["source_sha256"][kind], role=role)
        for kind, role in roles.items()
    ]


def _edited_mask(
    plan: SynthesisPlan, store: str | Path, label: np.ndarray, outline: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, list[AppliedEdit], list[SourceFile]]:
    """Apply the plan's edits with its seed and check the result: the mask, its outline (rotations and flips
    follow; lesions move towards its centre and must stay inside it), the edit records and the lesion sources.
    Raises `InvalidEditError` naming the plan."""
    if not plan.edits:
        return label, outline, [], []
    pasted = sorted({edit.source_case_id for edit in plan.edits if isinstance(edit, PasteLesion)})
    lesion_sources = {case_id: open_case_arrays(store, case_id)[1][:] for case_id in pasted}
    lesion_files = [source for case_id in pasted for source in _case_files(store, case_id, {"label": "lesion_source"})]
    lesion_labels = sorted(
        {value for edit in plan.edits if isinstance(edit, ShiftLabels | PasteLesion) for value in edit.labels}
    )
    try:
        mask, applied = apply_edits(
            label, list(plan.edits), plan.seed, body_mask=outline, lesion_sources=lesion_sources
        )
        outline = apply_geometry(outline, applied)
        validate_mask(
            mask,
            set(range(1, num_classes + 1)),
            body_mask=outline,
            lesion_labels=tuple(lesion_labels),
            case_id=plan.synthetic_id,
        )
    except InvalidEditError as error:
        raise InvalidEditError(
            plan.synthetic_id,
            f"plan {plan.synthetic_id} ({plan.setting}, mask of case {plan.source_case_id}): {error.reason}",
        ) from error
    return mask.astype(np.uint8), outline.astype(np.uint8), applied, lesion_files


def check_models(plan: SynthesisPlan, models: LoadedModels) -> None:
    """Refuse a plan made for other checkpoints than the loaded ones (its id would not describe the volume)."""
    if plan.checkpoint_sha256 != models.denoiser_ref.sha256:
        raise ValueError(
            f"plan {plan.synthetic_id} was made for checkpoint {plan.checkpoint_sha256[:12]}, "
            f"loaded denoiser is {models.denoiser_ref.sha256[:12]}"
        )
    if models.uses_informed_slice and plan.informed.mode == "generated":
        if models.generator_ref is None:
            raise MissingFileError(None, f"plan {plan.synthetic_id} needs the slicegen bundle, none was loaded")
        if plan.informed.generator_sha256 != models.generator_ref.sha256:
            raise ValueError(f"plan {plan.synthetic_id} was made for another slice generator")


def _prepare(plan: SynthesisPlan, store: str | Path, models: LoadedModels) -> PreparedPlan:
    label = open_case_arrays(store, plan.source_case_id)[1][:]
    if sha256_array(label) != plan.source_mask_sha256:
        raise StoreError(plan.source_case_id, f"mask changed since plan {plan.synthetic_id} was made")
    outline = open_case_outline(store, plan.source_case_id)[:]
    mask, outline, applied, lesion_files = _edited_mask(plan, store, label, outline, models.num_classes)
    informed = None
    if models.uses_informed_slice and plan.informed.mode == "chosen":
        informed = chosen_slice(store, plan.informed.case_id, plan.informed.slice_index)
    elif models.uses_informed_slice and plan.informed.mode == "fixed":
        informed = fixed_slice(store, plan.informed.case_id, plan.informed.slice_index)
    sources = _case_files(store, plan.source_case_id, {"image": "image", "label": "label"})
    return PreparedPlan(plan, mask, outline, applied, informed, sources + lesion_files)


def generate_informed(prepared: list[PreparedPlan], models: LoadedModels, config: Config) -> None:
    """Fill in the generated informed slices of the plans that need one, in one batch."""
    pending = [item for item in prepared if models.uses_informed_slice and item.plan.informed.mode == "generated"]
    if not pending:
        return
    slices = generate_slices(
        models.slice_generator,
        models.codec,
        positions=[item.plan.start_slice / item.mask.shape[0] for item in pending],
        seeds=[item.plan.seed for item in pending],
        size=pending[0].mask.shape[-1],
        diffusion_config=config.diffusion,
        sampling_config=config.sampling,
        generator_sha256=models.generator_ref.sha256,
        slice_indices=[item.plan.start_slice for item in pending],
        decode_chunk=config.sampling.decode_chunk,
    )
    for item, informed in zip(pending, slices, strict=True):
        item.informed = informed


def prepare_all(
    plans: Sequence[SynthesisPlan],
    store: str | Path,
    models: LoadedModels,
    on_invalid: Callable[[SynthesisPlan, InvalidEditError], None] | None,
) -> list[PreparedPlan]:
    prepared = []
    for plan in plans:
        try:
            prepared.append(_prepare(plan, store, models))
        except InvalidEditError as error:
            if on_invalid is None:
                raise
            on_invalid(plan, error)
    return prepared
