"""The evaluation library end to end on real stores and tiny real models, without Prefect.

Only volumes of the current checkpoints and sampler settings are scored (older ones counted), seams come from
each volume's own record, the streamed statistics equal the all-in-memory ones, and a volume that derives
from any non-training case never trains the segmenter.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gem3d.config import config_hash
from gem3d.evaluation import (
    RegenerationArm,
    evaluate,
    recorded_boundaries,
    usable_for_training,
)
from gem3d.features import slice_targets, train_feature_extractor, volume_slices
from gem3d.lineage import LineageRecord
from gem3d.metrics import frechet_distance, mmd, seam_score
from gem3d.report import evaluation_report_inputs, render_report
from gem3d.sampling.windows import window_boundaries
from gem3d.splits import store_cases_of_split
from gem3d.store import read_case, store_attributes
from gem3d.synthesis import SynthesisPlan, load_models, plan_enhancement, synthesize
from gem3d.synthetic_store import read_synthetic, write_synthetic
from tests.synthesis import CONFIG, build_models, build_store

EVAL_CONFIG = CONFIG.model_copy(
    update={
        "evaluation": CONFIG.evaluation.model_copy(
            update={"feature_steps": 4, "segmentation_steps": 2, "lineage_entries": 2}
        )
    }
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread than on two contended cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _older(volume, synthetic_id: str, **lineage):
    """A copy of a published volume as an earlier run would have left it (other checkpoints or sampler)."""
    plan = volume.plan.model_copy(update={"synthetic_id": synthetic_id})
    record = volume.lineage.model_copy(update={"synthetic_id": synthetic_id, **lineage})
    return replace(volume, plan=plan, lineage=record)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 5-case store (3 train, 1 val, 1 test), tiny bundles, and a synthetic store with current, leaky and older
    volumes; evaluated once with test-case regeneration done by plain library calls."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evaluate")
    store = build_store(root, cases=5)
    models_dir = build_models(root / "models")
    models = load_models(models_dir, CONFIG, device="cpu")
    train_ids = store_cases_of_split(store, "train")
    test_id = store_cases_of_split(store, "test")[0]
    plans = plan_enhancement(
        store, train_ids[:2], "ic", 2, CONFIG, models.denoiser_ref.sha256, config_hash(CONFIG), base_seed=0
    )
    leaky = SynthesisPlan.create(
        **{
            **plans[0].model_dump(exclude={"synthetic_id"}),
            "variant": 7,
            "informed": {"mode": "chosen", "case_id": test_id, "slice_index": 0},
        }
    )
    volumes = synthesize([*plans, leaky], store, models, CONFIG)
    old_checkpoints = [ref.model_copy(update={"sha256": "0" * 64}) for ref in volumes[0].lineage.checkpoints]
    older = [
        _older(volumes[0], "syn-older-checkpoint", checkpoints=old_checkpoints),
        _older(volumes[1], "syn-older-sampler", sampler={**volumes[1].lineage.sampler, "overlap": 2}),
    ]
    synthetic = root / "synthetic.zarr"
    write_synthetic(synthetic, [*volumes, *older])
    evaluation_store = root / "evaluation.zarr"
    arms: list[RegenerationArm] = []

    def regenerate(arm: RegenerationArm) -> None:
        arms.append(arm)
        arm_models = load_models(models_dir, arm.config, role=arm.role, device="cpu")
        write_synthetic(evaluation_store, synthesize(arm.plans, store, arm_models, arm.config))

    result = evaluate(store, synthetic, EVAL_CONFIG, models_dir, evaluation_store, regenerate)
    return SimpleNamespace(
        store=store,
        synthetic=synthetic,
        result=result,
        arms=arms,
        current=[volume.plan.synthetic_id for volume in volumes[:-1]],
        leaky=leaky.synthetic_id,
        older=["syn-older-checkpoint", "syn-older-sampler"],
        test_id=test_id,
    )


def test_only_volumes_of_the_current_checkpoints_and_sampler_are_scored_and_the_older_counted(world) -> None:
    result = world.result
    assert sorted(result.evaluated) == sorted([*world.current, world.leaky])
    assert sorted(result.left_out) == sorted(world.older)
    assert result.metrics()["synthetic.left_out"] == 2.0
    assert result.metrics()["synthetic.evaluated"] == 5.0
    [ic] = [summary for summary in result.settings if summary.setting == "ic"]
    assert len(ic.seam_overlap) == 5


def test_the_report_says_how_many_older_volumes_were_left_out(world, tmp_path) -> None:
    html = render_report(tmp_path, evaluation_report_inputs(world.result, "t", "hash", {})).read_text()
    assert "2 older volumes" in html and "5 evaluated, 2 older left out" in html


def test_seams_are_scored_at_the_windows_each_volume_own_sampler_placed(world) -> None:
    expected = []
    for synthetic_id in world.result.evaluated:
        image, _, record = read_synthetic(world.synthetic, synthetic_id)
        assert recorded_boundaries(record, len(image)) == window_boundaries(
            len(image), record.start_slice, record.sampler["window_length"], record.sampler["overlap"], "both"
        )
        expected.append(seam_score(image, recorded_boundaries(record, len(image))))
    [ic] = [summary for summary in world.result.settings if summary.setting == "ic"]
    np.testing.assert_allclose(ic.seam_overlap, expected)


def test_recorded_boundaries_follow_the_record_not_the_current_config() -> None:
    record = LineageRecord(
        synthetic_id="syn-x", start_slice=0, sampler={"window_length": 3, "overlap": 0, "directions": "up"}
    )
    assert recorded_boundaries(record, 10) == [3, 6, 9]
    assert recorded_boundaries(record, 10) != window_boundaries(10, 0, CONFIG.data.window_length, 1, "up")


def test_streamed_distances_equal_those_of_all_slices_in_memory(world) -> None:
    """The old way: concatenate every slice, train on the arrays, compare whole feature sets."""
    result = world.result
    real = [read_case(world.store, case) for case in result.training_case_ids]
    slices = volume_slices([image for image, _ in real])
    num_classes = len(store_attributes(world.store)["labels"])
    targets = np.concatenate([slice_targets(label, num_classes) for _, label in real])
    extractor = train_feature_extractor(slices, targets, EVAL_CONFIG.seed, EVAL_CONFIG.evaluation.feature_steps)
    all_real = volume_slices([read_case(world.store, case)[0] for case in result.test_case_ids] + [slices[:, 0]])
    synthetic = volume_slices([read_synthetic(world.synthetic, i)[0] for i in result.evaluated])
    real_features, synthetic_features = extractor.extract(all_real), extractor.extract(synthetic)
    [ic] = [summary for summary in result.settings if summary.setting == "ic"]
    assert ic.frechet == pytest.approx(frechet_distance(real_features, synthetic_features), rel=1e-6, abs=1e-9)
    assert ic.mmd == pytest.approx(mmd(real_features, synthetic_features), rel=1e-6, abs=1e-9)


def test_a_volume_with_a_test_cases_informed_slice_never_trains_the_segmenter(world) -> None:
    result = world.result
    assert sorted(result.used_for_training) == sorted(world.current)
    assert world.leaky in result.evaluated and world.leaky not in result.used_for_training
    synthetic_counts = {row["n_synthetic"] for row in result.dice_rows if row["setting"] == "real+synthetic"}
    assert max(synthetic_counts) == len(world.current)


def test_training_use_needs_every_source_to_be_a_training_case_in_use() -> None:
    splits = {"a": "train", "b": "train", "v": "val", "t": "test"}
    in_use = ["a", "b"]
    assert usable_for_training({"a", "b"}, splits, in_use)
    assert not usable_for_training({"a", "t"}, splits, in_use)
    assert not usable_for_training({"a", "gone"}, splits, in_use)
    assert not usable_for_training({"a", "v"}, splits, in_use)  # val held out as the test set here
    assert not usable_for_training(set(), splits, in_use)


def test_test_cases_are_regenerated_by_the_callback_and_scored_for_fidelity(world) -> None:
    assert [arm.name for arm in world.arms] == ["gem3d", "no_overlap", "baseline"]
    assert world.arms[1].config.sampling.overlapped_inpainting is False
    gem3d, baseline = world.result.settings[:2]
    assert len(gem3d.psnr) == len(gem3d.ssim) == len(gem3d.seam_no_overlap) == 1
    assert len(baseline.psnr) == 1 and all(np.isfinite(gem3d.psnr + baseline.psnr))
    assert world.result.test_case_ids == [world.test_id]


def test_the_evaluation_does_not_import_the_report() -> None:
    code = "import sys, gem3d.evaluation, gem3d.metrics; assert 'gem3d.report' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
