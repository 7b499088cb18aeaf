"""Regenerating published volumes from their recorded plan, config and checkpoints."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from gem3d.config import config_hash
from gem3d.errors import StoreError
from gem3d.reproduce import generation_record, regenerate
from gem3d.store import CASES
from gem3d.synthesis import plan_counterfactual, plan_enhancement, synthesize
from gem3d.synthetic_store import write_synthetic
from tests.synthesis import CONFIG, build_setup

HASH = config_hash(CONFIG)


@pytest.fixture
def published(tmp_path):
    store, models_dir, models, cases = build_setup(tmp_path)
    digest, generator = models.denoiser_ref.sha256, models.generator_ref.sha256
    plans = [
        *plan_enhancement(store, cases[:2], "icma", 1, CONFIG, digest, HASH),
        *plan_enhancement(store, cases[:1], "ig", 1, CONFIG, digest, HASH, generator_sha256=generator),
        *plan_counterfactual(store, "case_000", "case_002:5", ["remove:2"], CONFIG, digest, HASH),
    ]
    volumes = synthesize(plans, store, models, CONFIG)
    synthetic = tmp_path / "synthetic.zarr"
    write_synthetic(synthetic, volumes, generation=generation_record(CONFIG, store, models_dir, "stage2"))
    return store, models_dir, synthetic, volumes


def test_every_kind_of_volume_regenerates_within_tolerance(published):
    _, _, synthetic, volumes = published
    for volume in volumes:
        outcome = regenerate(synthetic, volume.plan.synthetic_id, device="cpu")
        assert outcome.reproduced and outcome.mask_identical
        assert outcome.max_abs_difference < 1e-4 and outcome.psnr_db >= 60


def test_a_volume_whose_stored_image_changed_is_not_reproduced(published):
    _, _, synthetic, volumes = published
    target = volumes[0].plan.synthetic_id
    image = zarr.open_array(synthetic / CASES / target / "image", mode="r+")
    image[:] = np.clip(image[:] + np.float32(0.2), -1, 1)
    outcome = regenerate(synthetic, target, device="cpu")
    assert not outcome.identical and not outcome.reproduced
    assert outcome.psnr_db < 40


def test_a_retrained_denoiser_is_refused(published):
    _, models_dir, synthetic, volumes = published
    shutil.rmtree(models_dir / "stage2")
    shutil.copytree(models_dir / "baseline", models_dir / "stage2")
    with pytest.raises(ValueError, match="checkpoint"):
        regenerate(synthetic, volumes[0].plan.synthetic_id, device="cpu")


def test_a_changed_source_mask_is_refused(published):
    store, _, synthetic, volumes = published
    volume = volumes[0]
    label = zarr.open_array(store / CASES / volume.plan.source_case_id / "label", mode="r+")
    label[0, 0, 0] = 1 - label[0, 0, 0]
    with pytest.raises(StoreError, match="mask changed"):
        regenerate(synthetic, volume.plan.synthetic_id, device="cpu")


def test_a_volume_without_a_generation_record_is_refused(published, tmp_path):
    _, _, _, volumes = published
    bare = tmp_path / "bare.zarr"
    write_synthetic(bare, volumes[:1])
    with pytest.raises(StoreError, match="no generation record"):
        regenerate(bare, volumes[0].plan.synthetic_id)
