"""Generating planned volumes with real (tiny, untrained) bundles: shapes, ranges, edits and full lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gem3d.checkpoints import ModelSpec, build_model, save_model
from gem3d.config import AutoencoderConfig, config_hash
from gem3d.editing import AppliedEdit, RemoveLabel, replay_edits
from gem3d.errors import InvalidEditError
from gem3d.lineage import missing_fields, sha256_file
from gem3d.preprocess import denormalise_intensity
from gem3d.store import case_attributes, read_case, read_manifest
from gem3d.synthesis import (
    SynthesisPlan,
    load_models,
    plan_counterfactual,
    plan_deenhancement,
    plan_enhancement,
    plan_test_regeneration,
    synthesize,
    to_original_units,
)
from tests.synthesis import CONFIG, NUM_CLASSES, build_models, build_store

HASH = config_hash(CONFIG)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthesize")
    store = build_store(root)
    models_dir = build_models(root / "models")
    return store, models_dir, load_models(models_dir, CONFIG, device="cpu")


@pytest.fixture(scope="module")
def plans(setup):
    store, _, models = setup
    cases = sorted(read_manifest(store)["case_id"])
    digest = models.denoiser_ref.sha256
    return {
        "ic": plan_enhancement(store, cases[:2], "ic", 1, CONFIG, digest, HASH),
        "icma": plan_enhancement(store, cases[:2], "icma", 1, CONFIG, digest, HASH),
        "ig": plan_enhancement(
            store, cases[:1], "ig", 1, CONFIG, digest, HASH, generator_sha256=models.generator_ref.sha256
        ),
        "test": plan_test_regeneration(store, cases[3:], CONFIG, digest, HASH),
        "counterfactual": plan_counterfactual(store, "case_000", "case_002:5", ["remove:2"], CONFIG, digest, HASH),
        "deenhance": plan_deenhancement(store, cases[:1], "case_002", CONFIG, digest, HASH),
    }


@pytest.fixture(scope="module")
def volumes(setup, plans):
    store, _, models = setup
    everything = [plan for group in plans.values() for plan in group]
    return {volume.plan.synthetic_id: volume for volume in synthesize(everything, store, models, CONFIG)}


def test_every_plan_gives_a_finite_volume_in_range_with_the_mask_shape(setup, plans, volumes):
    store, _, _ = setup
    assert len(volumes) == sum(len(group) for group in plans.values())
    for volume in volumes.values():
        _, label = read_case(store, volume.plan.source_case_id)
        assert volume.image.shape == volume.mask.shape == label.shape
        assert volume.image.dtype == np.float32 and volume.mask.dtype == np.uint8
        assert np.isfinite(volume.image).all()
        assert volume.image.min() >= -1 and volume.image.max() <= 1
        assert volume.image.std() > 1e-3


def test_lineage_is_complete_and_traces_sources_checkpoints_and_informed_slice(setup, plans, volumes):
    store, models_dir, models = setup
    for volume in volumes.values():
        record, plan = volume.lineage, volume.plan
        assert missing_fields(record) == []
        assert record.synthetic_id == plan.synthetic_id and record.seed == plan.seed
        assert record.start_slice == plan.start_slice and record.config_hash == HASH
        assert record.sampler["steps"] == CONFIG.sampling.steps
        assert record.sampler["window_length"] == CONFIG.data.window_length
        attributes = case_attributes(store, plan.source_case_id)
        roles = {source.role: source for source in record.source_files}
        assert roles["label"].sha256 == attributes["source_sha256"]["label"]
        assert roles["image"].path == attributes["source_files"]["image"]
        stage2 = record.checkpoints[0]
        assert stage2.role == "stage2" and stage2.sha256 == sha256_file(models_dir / "stage2" / "model.safetensors")
        assert record.informed_slice.mode == plan.informed.mode
        if plan.informed.mode != "generated":
            assert record.informed_slice.case_id == plan.informed.case_id
            assert record.informed_slice.slice_index == plan.informed.slice_index
            informed_files = [source for source in record.source_files if source.role == "informed_source"]
            expected = case_attributes(store, plan.informed.case_id)["source_sha256"]["image"]
            assert [source.sha256 for source in informed_files] == [expected]
    [generated] = [volumes[plan.synthetic_id] for plan in plans["ig"]]
    assert [checkpoint.role for checkpoint in generated.lineage.checkpoints] == ["stage2", "slicegen"]
    assert generated.lineage.informed_slice.generator_checkpoint_sha256 == models.generator_ref.sha256
    assert generated.lineage.informed_slice.seed == generated.plan.seed


def test_ma_volumes_record_concrete_edits_and_keep_the_edited_mask(setup, plans, volumes):
    store, _, _ = setup
    for plan in plans["icma"]:
        volume = volumes[plan.synthetic_id]
        kinds = [edit["kind"] for edit in volume.lineage.mask_edits]
        assert kinds == ["rotate", "flip", "shift"]
        assert len(volume.lineage.mask_edits[0]["sampled"]["degrees"]) == 3
        assert isinstance(volume.lineage.mask_edits[1]["sampled"]["flipped"], bool)
        _, label = read_case(store, plan.source_case_id)
        applied = [AppliedEdit.from_dict(edit) for edit in volume.lineage.mask_edits]
        np.testing.assert_array_equal(volume.mask, replay_edits(label, applied))
        assert not np.array_equal(volume.mask, label)


def test_counterfactual_removal_is_applied_and_unedited_plans_keep_the_source_mask(setup, plans, volumes):
    store, _, _ = setup
    [counterfactual] = [volumes[plan.synthetic_id] for plan in plans["counterfactual"]]
    assert 2 not in counterfactual.mask and (read_case(store, "case_000")[1] == 2).any()
    assert counterfactual.lineage.informed_slice.mode == "fixed"
    for plan in plans["ic"] + plans["test"] + plans["deenhance"]:
        np.testing.assert_array_equal(volumes[plan.synthetic_id].mask, read_case(store, plan.source_case_id)[1])


def test_volumes_do_not_depend_on_the_other_plans_in_the_batch(setup, plans, volumes):
    store, _, models = setup
    plan = plans["icma"][1]
    [alone] = synthesize([plan], store, models, CONFIG)
    np.testing.assert_allclose(alone.image, volumes[plan.synthetic_id].image, atol=1e-5)
    np.testing.assert_array_equal(alone.mask, volumes[plan.synthetic_id].mask)


def test_invalid_edited_mask_raises_naming_the_plan_or_is_reported(setup, plans):
    store, _, models = setup
    base = plans["test"][0]
    changes = {"edits": (RemoveLabel(labels=(1, 2)),), "setting": "counterfactual"}
    invalid = SynthesisPlan.create(**(base.model_dump(exclude={"synthetic_id"}) | changes))
    with pytest.raises(InvalidEditError, match=invalid.synthetic_id) as caught:
        synthesize([invalid, base], store, models, CONFIG)
    assert caught.value.path == invalid.synthetic_id and "empty" in caught.value.reason
    reported = []
    kept = synthesize([invalid, base], store, models, CONFIG, on_invalid=lambda plan, error: reported.append(plan))
    assert reported == [invalid]
    assert [volume.plan for volume in kept] == [base]


def test_plans_made_for_another_checkpoint_are_refused(setup, plans):
    store, _, models = setup
    plan = plans["test"][0]
    other = SynthesisPlan.create(**(plan.model_dump(exclude={"synthetic_id"}) | {"checkpoint_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="checkpoint"):
        synthesize([other], store, models, CONFIG)
    generated = plans["ig"][0]
    informed = generated.informed.model_copy(update={"generator_sha256": "0" * 64})
    foreign = SynthesisPlan.create(**(generated.model_dump(exclude={"synthetic_id"}) | {"informed": informed}))
    with pytest.raises(ValueError, match="slice generator"):
        synthesize([foreign], store, models, CONFIG)


def test_baseline_samples_without_informed_slice_and_is_complete_for_its_kind(setup, plans):
    store, models_dir, _ = setup
    baseline = load_models(Path(models_dir), CONFIG, role="baseline", device="cpu")
    assert not baseline.uses_informed_slice
    [plan] = plan_test_regeneration(store, ["case_003"], CONFIG, baseline.denoiser_ref.sha256, HASH)
    [volume] = synthesize([plan], store, baseline, CONFIG)
    assert volume.image.shape == volume.mask.shape and np.isfinite(volume.image).all()
    assert volume.lineage.informed_slice is None
    assert [checkpoint.role for checkpoint in volume.lineage.checkpoints] == ["baseline"]
    assert missing_fields(volume.lineage) == []


def test_original_units_use_the_case_normalisation(setup, volumes):
    store, _, _ = setup
    volume = next(iter(volumes.values()))
    normalisation = case_attributes(store, volume.plan.source_case_id)["normalisation"]
    converted = to_original_units(volume.image, normalisation)
    np.testing.assert_allclose(converted, denormalise_intensity(volume.image, normalisation))
    extremes = [normalisation["low"], normalisation["high"]]
    np.testing.assert_allclose([converted.min(), converted.max()], extremes, rtol=1e-5)


def test_latent_first_stage_decodes_to_image_size_and_is_recorded(tmp_path, setup):
    store, _, _ = setup
    autoencoder = AutoencoderConfig(kind="train", latent_channels=2, block_channels=(8, 8), mask_conditioning="encoder")
    config = CONFIG.model_copy(update={"autoencoder": autoencoder})
    build_models(tmp_path, config)
    spec = ModelSpec("autoencoder", NUM_CLASSES)
    codec_sha256 = save_model(build_model(spec, config), spec, config, tmp_path / "autoencoder", extra={})
    models = load_models(tmp_path, config, device="cpu")
    assert models.codec.downsampling == 2
    digests = {"checkpoint_sha256": models.denoiser_ref.sha256, "generator_sha256": models.generator_ref.sha256}
    plans = plan_enhancement(store, ["case_000"], "ig", 1, config, config_hash=HASH, **digests)
    [volume] = synthesize(plans, store, models, config)
    assert volume.image.shape == volume.mask.shape == (10, 16, 16)
    assert np.isfinite(volume.image).all() and volume.image.min() >= -1 and volume.image.max() <= 1
    assert [(ref.role, ref.sha256) for ref in volume.lineage.checkpoints][1] == ("autoencoder", codec_sha256)
    assert missing_fields(volume.lineage) == []


def test_deterministic_kernels_change_nothing_on_cpu_and_are_recorded(setup, plans):
    store, _, models = setup
    config = CONFIG.model_copy(update={"runtime": CONFIG.runtime.model_copy(update={"deterministic": True})})
    chosen = plans["ic"] + plans["ig"]
    default = synthesize(chosen, store, models, CONFIG)
    deterministic = synthesize(chosen, store, models, config)
    for plain, strict in zip(default, deterministic, strict=True):
        assert np.array_equal(plain.image, strict.image)
        assert strict.lineage.sampler["deterministic_kernels"] is True
        assert plain.lineage.sampler["deterministic_kernels"] is False
        assert strict.lineage.sampler["device"] == "cpu"
    assert not torch.are_deterministic_algorithms_enabled()
