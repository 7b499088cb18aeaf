"""Enhancement, counterfactuals, lineage, audit and export on the micro pipeline's trained models."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from flows.counterfactual import counterfactual_flow
from gem3d.checkpoints import ModelSpec, build_model, read_bundle_meta, save_model
from gem3d.export import synthetic_splits
from gem3d.io.layouts import discover_dataset
from gem3d.lineage import read_lineage_table
from gem3d.splits import TRAINING_SPLITS
from gem3d.store import case_attributes
from gem3d.synthetic_store import LINEAGE, list_synthetic, read_synthetic
from tests.flows.conftest import MICRO_CONFIG

runner = CliRunner()


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_synthetic_volume_has_a_complete_lineage_record(micro_run):
    workdir, _ = micro_run
    records = read_lineage_table(workdir / "synthetic.zarr" / LINEAGE)
    assert {r.synthetic_id for r in records} == set(list_synthetic(workdir / "synthetic.zarr"))
    record = records[0]
    assert record.flow_run_id and record.config_hash and record.checkpoints[0].sha256
    assert record.checkpoints[0].mlflow_run_id and record.checkpoints[0].model_version == "1"
    assert any(source.path.endswith(".nii.gz") for source in record.source_files)


def test_lineage_command_prints_the_chain_back_to_the_real_files(micro_run):
    workdir, _ = micro_run
    synthetic_id = list_synthetic(workdir / "synthetic.zarr")[0]
    outcome = runner.invoke(app, ["lineage", synthetic_id, "--synthetic", str(workdir / "synthetic.zarr")])
    assert outcome.exit_code == 0
    assert synthetic_id in outcome.output and ".nii.gz" in outcome.output


@pytest.mark.parametrize("target", ["source", "checkpoint"])
def test_audit_catches_one_flipped_byte(micro_run, tmp_path, target):
    workdir, _ = micro_run
    synthetic = str(workdir / "synthetic.zarr")
    assert runner.invoke(app, ["audit", synthetic]).exit_code == 0
    record = read_lineage_table(workdir / "synthetic.zarr" / LINEAGE)[0]
    path = workdir / "models" / "stage2" / "model.safetensors"
    if target == "source":
        path = next(p for p in map(lambda s: s.path, record.source_files) if p.endswith(".nii.gz"))
    path = type(workdir)(path)
    backup = tmp_path / "backup"
    shutil.copy2(path, backup)
    try:
        _flip_byte(path)
        outcome = runner.invoke(app, ["audit", synthetic, "--json"])
        assert outcome.exit_code == 1
        problems = json.loads(outcome.output)["problems"]
        assert {problem["kind"] for problem in problems} == {"changed_file"}
        assert {Path(problem["path"]).name for problem in problems} == {path.name}
    finally:
        shutil.copy2(backup, path)


def test_reproduce_regenerates_pipeline_volumes_from_their_records(micro_run):
    workdir, _ = micro_run
    synthetic = workdir / "synthetic.zarr"
    chosen = list_synthetic(synthetic)[:2]
    outcome = runner.invoke(app, ["reproduce", str(synthetic), *chosen, "--device", "cpu"])
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.count("reproduced") == 2 and "NOT" not in outcome.output
    assert all(synthetic_id[:12] in outcome.output for synthetic_id in chosen)


def test_reproduce_fails_on_an_unknown_volume(micro_run):
    workdir, _ = micro_run
    outcome = runner.invoke(app, ["reproduce", str(workdir / "synthetic.zarr"), "syn-missing"])
    assert outcome.exit_code == 1
    assert "cannot regenerate" in outcome.output


def test_counterfactual_removes_a_lesion_label_and_records_the_edit(micro_run, tmp_path):
    workdir, _ = micro_run
    out = tmp_path / "counterfactual.zarr"
    outcome = counterfactual_flow(
        str(workdir / "store.zarr"), str(out), "brain_000", "brain_001", ["remove:3"], 1, MICRO_CONFIG, str(workdir)
    )
    [synthetic_id] = outcome["written"]
    image, mask, record = read_synthetic(out, synthetic_id)
    assert 3 not in np.unique(mask) and mask.any()
    assert record.mask_edits[0]["kind"] == "remove"
    assert record.informed_slice.case_id == "brain_001"
    again = counterfactual_flow(
        str(workdir / "store.zarr"), str(out), "brain_000", "brain_001", ["remove:3"], 1, MICRO_CONFIG, str(workdir)
    )
    assert again["written"] == [] and again["skipped"] == 1


def test_nifti_export_uses_the_source_affine(micro_run, tmp_path):
    workdir, _ = micro_run
    synthetic = workdir / "synthetic.zarr"
    outcome = runner.invoke(
        app, ["export", "--store", str(workdir / "store.zarr"), "--synthetic", str(synthetic), "--out", str(tmp_path)]
    )
    assert outcome.exit_code == 0, outcome.output
    synthetic_id = list_synthetic(synthetic)[0]
    _, _, record = read_synthetic(synthetic, synthetic_id)
    exported = nib.load(tmp_path / f"{synthetic_id}_image.nii.gz")
    source_affine = np.asarray(case_attributes(workdir / "store.zarr", record.source_case_id)["affine"])
    np.testing.assert_allclose(exported.affine, source_affine, atol=1e-5)


def test_nnunet_export_is_a_complete_raw_dataset(micro_run, tmp_path):
    workdir, _ = micro_run
    synthetic = workdir / "synthetic.zarr"
    outcome = runner.invoke(
        app,
        [
            "export",
            "--store",
            str(workdir / "store.zarr"),
            "--synthetic",
            str(synthetic),
            "--out",
            str(tmp_path),
            "--format",
            "nnunet",
            "--dataset-id",
            "7",
            "--name",
            "Micro",
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    root = tmp_path / "Dataset007_Micro"
    meta = json.loads((root / "dataset.json").read_text())
    info = discover_dataset(root)
    assert info.layout == "nnunet" and len(info.cases) == meta["numTraining"]
    derived = synthetic_splits(synthetic, workdir / "store.zarr")
    assert meta["numTraining"] == 5 + sum(split in TRAINING_SPLITS for split in derived.values())
    assert meta["labels"]["background"] == 0


def test_models_are_cached_by_their_weights_not_by_the_sampling_settings(tmp_path):
    """The evaluation's ablation (same weights, no overlapped inpainting) shares the loaded networks."""
    from tasks.synthesis import cached_models
    from tests.synthesis import CONFIG, build_models

    models_dir = build_models(tmp_path / "models")
    weights = read_bundle_meta(models_dir / "stage2")["sha256"]
    ablation = CONFIG.model_copy(
        update={"sampling": CONFIG.sampling.model_copy(update={"overlapped_inpainting": False, "steps": 7})}
    )
    first = cached_models(models_dir, "stage2", CONFIG, weights)
    assert cached_models(models_dir, "stage2", ablation, weights) is first
    torch.manual_seed(5)  # retrain: other weights in the same bundle folder
    spec = ModelSpec("stage2", 2, use_informed_slice=True, volumetric=True)
    new_weights = save_model(build_model(spec, CONFIG), spec, CONFIG, models_dir / "stage2", extra={})
    assert new_weights != weights
    reloaded = cached_models(models_dir, "stage2", ablation, new_weights)
    assert reloaded is not first and reloaded.denoiser_ref.sha256 == new_weights
