"""The anatomy outline follows the mask edits of a synthesis plan: flips mirror it, lesions move inside it.

A small brain-phantom store is ingested for real; plans are prepared with a tiny untrained denoiser bundle.
Volumes are (Z, H, W); W is the left-right axis.
"""

from __future__ import annotations

import numpy as np
import pytest

from gem3d.checkpoints import ModelSpec, build_model, save_model
from gem3d.config import config_hash
from gem3d.editing import FlipLeftRight, ShiftLabels
from gem3d.ingest import process_case
from gem3d.io.layouts import discover_dataset
from gem3d.io.phantoms import write_phantom_dataset
from gem3d.store import init_store, open_case_outline, publish_case, read_case
from gem3d.synthesis import load_models, plan_counterfactual
from gem3d.synthesis.preparation import prepare_all
from tests.synthesis import CONFIG

CASE = "brain_000"
BRAIN_CLASSES = 3  # oedema, non-enhancing core, enhancing tumour
LESION = (1, 2, 3)
HASH = config_hash(CONFIG)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("outline_edits")
    info = discover_dataset(write_phantom_dataset(root / "raw", "brain", 1, shape=(32, 32, 16)))
    store = init_store(root / "store.zarr", {"modality": info.modality})
    for ref in info.cases:
        outcome = process_case(ref, info, CONFIG.data, store, "data-hash")
        publish_case(store, outcome.case_id, outcome.staged)
    return store


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A stage2 bundle of an untrained tiny denoiser for the phantom's three tumour classes."""
    models_dir = tmp_path_factory.mktemp("outline_models")
    spec = ModelSpec("stage2", BRAIN_CLASSES, use_informed_slice=True, volumetric=True)
    save_model(build_model(spec, CONFIG), spec, CONFIG, models_dir / "stage2", extra={})
    return load_models(models_dir, CONFIG, device="cpu")


def _prepared(store, models, edits):
    [plan] = plan_counterfactual(store, CASE, None, edits, CONFIG, models.denoiser_ref.sha256, HASH)
    [prepared] = prepare_all([plan], store, models, on_invalid=None)
    return prepared


def _in_plane_centre(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask)[:, 1:].mean(axis=0)  # (H, W)


def test_stored_outline_is_not_left_right_symmetric(store):
    """Without this, a flipped outline could not be told from an unflipped one."""
    outline = open_case_outline(store, CASE)[:]
    assert not np.array_equal(outline, outline[:, :, ::-1])


def test_plan_without_edits_keeps_the_stored_outline(store, models):
    prepared = _prepared(store, models, [])
    np.testing.assert_array_equal(prepared.outline, open_case_outline(store, CASE)[:])
    np.testing.assert_array_equal(prepared.mask, read_case(store, CASE)[1])


def test_left_right_flip_mirrors_the_outline_with_the_mask(store, models):
    prepared = _prepared(store, models, [FlipLeftRight(probability=1.0)])
    assert prepared.applied[0].sampled["flipped"] is True
    np.testing.assert_array_equal(prepared.mask, read_case(store, CASE)[1][:, :, ::-1])
    np.testing.assert_array_equal(prepared.outline, open_case_outline(store, CASE)[:][:, :, ::-1])


def test_shifted_lesion_moves_towards_the_outline_centre_and_stays_inside_it(store, models):
    _, label = read_case(store, CASE)
    outline = open_case_outline(store, CASE)[:].astype(bool)
    prepared = _prepared(store, models, [ShiftLabels(labels=LESION, min_voxels=2, max_voxels=3)])
    assert prepared.applied[0].sampled["shift"] != [0, 0, 0]
    np.testing.assert_array_equal(prepared.outline, outline)
    moved = np.isin(prepared.mask, LESION)
    assert moved.any() and prepared.outline.astype(bool)[moved].all()
    centre = _in_plane_centre(outline)
    before = np.linalg.norm(_in_plane_centre(np.isin(label, LESION)) - centre)
    after = np.linalg.norm(_in_plane_centre(moved) - centre)
    assert after < before


def test_flip_then_shift_keeps_the_lesion_inside_the_mirrored_outline(store, models):
    prepared = _prepared(store, models, [FlipLeftRight(probability=1.0), ShiftLabels(labels=LESION, min_voxels=2)])
    mirrored = open_case_outline(store, CASE)[:][:, :, ::-1]
    np.testing.assert_array_equal(prepared.outline, mirrored)
    moved = np.isin(prepared.mask, LESION)
    assert moved.any() and mirrored.astype(bool)[moved].all()
