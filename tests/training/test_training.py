"""Training stages on a tiny real store: overfitting, stage 2 from stage 1, bundles, autoencoder PSNR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gem3d.checkpoints import ModelSpec, build_model, load_model, save_model
from gem3d.config import Config
from gem3d.data import SliceDataset
from gem3d.errors import StoreError
from gem3d.lineage import sha256_file
from gem3d.models.autoencoder import build_autoencoder
from gem3d.models.conditioning import GEM3DDenoiser, SliceGenerator
from gem3d.training import StepBatchSampler, train_stage
from gem3d.training.latent_scale import estimate_latent_scale
from tasks.training import training_key
from tests.training.conftest import tiny_config, write_store


def test_stage1_overfits_one_window_and_writes_its_bundle(tmp_path: Path) -> None:
    store = write_store(tmp_path / "store.zarr", {"only": (4, "train")})
    config = tiny_config({"stage1": {"steps": 25, "learning_rate": 3e-3}})
    result = train_stage("stage1", config, store, tmp_path / "out")
    assert result.steps == 25 and len(result.losses) == 25
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:5])
    assert result.first_loss == result.losses[0] and result.final_loss == result.losses[-1]
    assert result.bundle_dir == tmp_path / "out" / "stage1"
    assert result.sha256 == sha256_file(result.bundle_dir / "model.safetensors")
    model, meta = load_model(result.bundle_dir)
    assert isinstance(model, GEM3DDenoiser)
    assert meta["spec"] == {"role": "stage1", "num_classes": 2, "use_informed_slice": True, "volumetric": False}
    assert result.validation["val_on_train"] == 1.0  # this store has no validation split
    assert result.slices_per_second > 0 and result.peak_memory_mb > 0
    with Image.open(result.sample_grid) as grid:  # rows mask | informed | generated | truth, one tile per slice
        assert grid.size == (4 * 16, 4 * 16) and grid.mode == "L"


def _temporal_names(model: GEM3DDenoiser) -> set[str]:
    temporal = {id(parameter) for parameter in model.temporal_parameters()}
    return {name for name, parameter in model.named_parameters() if id(parameter) in temporal}


def test_stage2_starts_from_stage1_and_trains_only_temporal_parameters(tmp_path: Path, small_store: Path) -> None:
    config = tiny_config({"stage1": {"steps": 4}, "stage2": {"steps": 6}})
    stage1 = train_stage("stage1", config, small_store, tmp_path)
    stage2 = train_stage("stage2", config, small_store, tmp_path, init_from=stage1.bundle_dir)
    before, _ = load_model(stage1.bundle_dir)
    after, meta = load_model(stage2.bundle_dir)
    assert meta["spec"] == {"role": "stage2", "num_classes": 2, "use_informed_slice": True, "volumetric": True}
    temporal = _temporal_names(after)
    assert temporal and not temporal & set(before.state_dict())
    weights = after.state_dict()
    for name, tensor in before.state_dict().items():
        assert torch.equal(weights[name], tensor), name
    zero_at_start = [name for name in temporal if name.endswith(("conv.weight", "to_out.weight"))]
    assert zero_at_start and all(weights[name].abs().sum() > 0 for name in zero_at_start)
    with pytest.raises(ValueError, match="init_from"):
        train_stage("stage2", config, small_store, tmp_path / "again")


def test_stage2_with_train_all_parameters_also_changes_the_2d_weights(tmp_path: Path, small_store: Path) -> None:
    config = tiny_config({"stage1": {"steps": 2}, "stage2": {"steps": 3, "train_all_parameters": True}})
    stage1 = train_stage("stage1", config, small_store, tmp_path)
    stage2 = train_stage("stage2", config, small_store, tmp_path, init_from=stage1.bundle_dir)
    before, _ = load_model(stage1.bundle_dir)
    after, _ = load_model(stage2.bundle_dir)
    weights = after.state_dict()
    assert not torch.equal(weights["unet.input_conv.weight"], before.state_dict()["unet.input_conv.weight"])


def test_slicegen_and_baseline_write_bundles_that_rebuild(tmp_path: Path, small_store: Path) -> None:
    config = tiny_config({"baseline": {"steps": 6}, "stage2": {"steps": 4}})
    slicegen = train_stage("slicegen", config, small_store, tmp_path)
    model, meta = load_model(slicegen.bundle_dir)
    assert isinstance(model, SliceGenerator) and meta["spec"]["role"] == "slicegen"
    prediction = model(torch.randn(3, 1, 16, 16), torch.tensor([1, 500, 999]), torch.tensor([0.0, 0.5, 0.9]))
    assert prediction.shape == (3, 1, 16, 16)
    with Image.open(slicegen.sample_grid) as grid:  # generated and real slices at 7 validation positions
        assert grid.size == (7 * 16, 2 * 16)
    baseline = train_stage("baseline", config, small_store, tmp_path)
    assert baseline.steps == 10 and len(baseline.losses) == 10
    model, meta = load_model(baseline.bundle_dir)
    assert meta["spec"] == {"role": "baseline", "num_classes": 2, "use_informed_slice": False, "volumetric": True}
    assert _temporal_names(model)
    output = model(torch.randn(1, 4, 1, 16, 16), torch.tensor([10]), torch.rand(1, 4, 3, 16, 16))  # 2 labels + body
    assert output.shape == (1, 4, 1, 16, 16)


def test_autoencoder_stage_reports_validation_psnr_and_latent_stage1_uses_it(tmp_path: Path, small_store: Path) -> None:
    config = tiny_config(
        {"autoencoder": {"steps": 30, "learning_rate": 3e-3}, "stage1": {"steps": 3}},
        autoencoder={"kind": "train"},
        diffusion={"prediction_type": "v_prediction"},
    )
    result = train_stage("autoencoder", config, small_store, tmp_path)
    codec, meta = load_model(result.bundle_dir)
    assert meta["spec"]["role"] == "autoencoder"
    dataset = SliceDataset(small_store, ["case_v"], seed=0)
    slices = torch.stack([dataset[index]["image"] for index in range(len(dataset))])  # (7, 1, 16, 16)
    reconstruction = codec.decode(codec.encode(slices)).clamp(-1, 1)
    psnr = 10 * torch.log10(4.0 / torch.mean((reconstruction - slices) ** 2))
    assert result.validation["val_psnr"] == pytest.approx(float(psnr), abs=1e-3)
    assert result.validation["val_items"] == 7
    latent = train_stage("stage1", config, small_store, tmp_path)
    model, stage1_meta = load_model(latent.bundle_dir)
    assert model.sample_channels == 2  # diffuses the autoencoder's latents
    assert stage1_meta["latent_scale_factor"] == meta["latent_scale_factor"] == codec.scale_factor
    with Image.open(latent.sample_grid) as grid:  # decoded back to 16x16 slices
        assert grid.size == (4 * 16, 4 * 16)


def _training_slices(store: Path) -> torch.Tensor:
    dataset = SliceDataset(store, ["case_a", "case_b", "case_c"], seed=0)
    return torch.stack([dataset[index]["image"] for index in range(len(dataset))])  # (27, 1, 16, 16)


def test_a_trained_autoencoder_records_the_scale_that_gives_its_latents_unit_variance(
    tmp_path: Path, small_store: Path
) -> None:
    config = tiny_config({"autoencoder": {"steps": 6, "learning_rate": 3e-3}}, autoencoder={"kind": "train"})
    result = train_stage("autoencoder", config, small_store, tmp_path)
    codec, meta = load_model(result.bundle_dir)
    slices = _training_slices(small_store)
    # the 27 training slices are fewer than the sample bound: the estimate used all of them
    assert float(codec.encode(slices).std()) == pytest.approx(1.0, abs=1e-3)
    assert meta["latent_scale_factor"] == codec.scale_factor
    assert codec.scale_factor == pytest.approx(1 / float(codec.posterior_mean(slices).std()), rel=1e-4)
    assert abs(codec.scale_factor - 0.18215) > 0.01 and codec.scale_factor != 1.0
    sampled = estimate_latent_scale(codec, small_store, ["case_a", "case_b", "case_c"], 0, torch.device("cpu"), 12)
    assert sampled == pytest.approx(codec.scale_factor, rel=0.3)  # a bounded sample estimates the same scale
    fixed = train_stage(
        "autoencoder",
        config.model_copy(update={"autoencoder": config.autoencoder.model_copy(update={"scale_factor": 0.5})}),
        small_store,
        tmp_path / "fixed",
    )
    assert load_model(fixed.bundle_dir)[0].scale_factor == 0.5


def test_autoencoder_stage_refuses_when_there_is_no_autoencoder_to_train(tmp_path: Path, small_store: Path) -> None:
    with pytest.raises(ValueError, match="no autoencoder to train"):
        train_stage("autoencoder", tiny_config(), small_store, tmp_path)


def test_each_rank_and_step_gets_its_own_dataset_indices() -> None:
    ranks = [list(StepBatchSampler(0, 5, 2, rank, 2)) for rank in (0, 1)]
    flat = [index for batches in ranks for batch in batches for index in batch]
    assert sorted(flat) == list(range(20))
    assert list(StepBatchSampler(3, 5, 2, 1, 2)) == ranks[1][3:]


LATENT_STAGES = ("stage1", "stage2", "slicegen", "baseline")


def _stage_keys(config: Config, store: Path, models_dir: Path) -> dict[str, str]:
    return {stage: training_key(config, store, stage, None, models_dir) for stage in ("autoencoder", *LATENT_STAGES)}


def test_latent_stage_keys_change_with_the_trained_autoencoders_weights(tmp_path: Path, small_store: Path) -> None:
    config = tiny_config(autoencoder={"kind": "train"})
    spec = ModelSpec("autoencoder", num_classes=2)
    codec = build_model(spec, config)
    save_model(codec, spec, config, tmp_path / "autoencoder", extra={})
    before = _stage_keys(config, small_store, tmp_path)
    save_model(codec, spec, config, tmp_path / "autoencoder", extra={"note": "saved again"})
    assert _stage_keys(config, small_store, tmp_path) == before  # same weights, same keys
    codec.set_scale_factor(0.25)  # a retrained autoencoder: another latent space
    save_model(codec, spec, config, tmp_path / "autoencoder", extra={})
    after = _stage_keys(config, small_store, tmp_path)
    assert after["autoencoder"] == before["autoencoder"]
    assert all(after[stage] != before[stage] for stage in LATENT_STAGES)


def test_latent_stage_keys_change_with_the_pretrained_autoencoders_files(tmp_path: Path, small_store: Path) -> None:
    folder = tmp_path / "vae"
    build_autoencoder(2, (8, 16), scale_factor=0.3).save_pretrained(folder)
    config = tiny_config(autoencoder={"kind": "pretrained", "pretrained_path": str(folder)})
    before = _stage_keys(config, small_store, tmp_path)
    assert _stage_keys(config, small_store, tmp_path) == before
    torch.manual_seed(1)
    build_autoencoder(2, (8, 16), scale_factor=0.3).save_pretrained(folder)
    retrained = _stage_keys(config, small_store, tmp_path)
    assert all(retrained[stage] != before[stage] for stage in LATENT_STAGES)
    settings = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(settings | {"scaling_factor": 0.5}))
    rescaled = _stage_keys(config, small_store, tmp_path)
    assert all(rescaled[stage] != retrained[stage] for stage in LATENT_STAGES)


def test_stage2_accepts_a_stage1_bundle_written_before_a_config_field_existed(
    tmp_path: Path, small_store: Path
) -> None:
    """A field added later (here Min-SNR) is read at its default from an older bundle; a real difference is refused."""
    config = tiny_config({"stage1": {"steps": 2}, "stage2": {"steps": 2}})
    stage1 = train_stage("stage1", config, small_store, tmp_path)
    meta_path = stage1.bundle_dir / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["diffusion"]["min_snr_gamma"]
    meta_path.write_text(json.dumps(meta))
    train_stage("stage2", config, small_store, tmp_path / "older", init_from=stage1.bundle_dir)
    meta["config"]["diffusion"]["prediction_type"] = "v_prediction"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="diffusion config differs"):
        train_stage("stage2", config, small_store, tmp_path / "other", init_from=stage1.bundle_dir)
