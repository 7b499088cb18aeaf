"""Peak memory of the evaluation at N and 4N cases: streaming (`gem3d.evaluation.evaluate`) vs all in memory.

Builds N and 4N phantom cases in a real store and, per training case, one synthetic volume (the real one
perturbed, with a lineage record naming the current checkpoint and sampler), then measures in a fresh
subprocess per size and approach the peak of Python-tracked memory (tracemalloc: every numpy array) and the
process's maximum resident set size. The baseline is the old approach: every case read into a dict and every
slice concatenated, features of all slices at once (its MMD uses the same bounded sample as the streaming
one, so only the data handling differs). The test-case regeneration (a trained model) is not part of this:
the metric pipeline is what is measured. Prints both peaks and the 4N/N ratios (flat ~1.0 is the goal).
The streaming peak is mostly the MMD's kernel matrices over its bounded sample (`MMD_SAMPLE` slices per set),
so it is flat once every feature set holds that many slices, as the default sizes do. Default run: ~2 minutes
on 2 cores; measured there: streaming 22.7 -> 22.9 MiB (1.01), all in memory 31.1 -> 57.6 MiB (1.85).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from gem3d.anatomy import anatomy_outline
from gem3d.config import Config, DataConfig, EvaluationConfig
from gem3d.evaluation import evaluate
from gem3d.evaluation.scores import MMD_SAMPLE
from gem3d.features import slice_targets, train_feature_extractor, volume_slices
from gem3d.lineage import CheckpointRef, LineageRecord
from gem3d.metrics import FeatureReservoir, frechet_distance, mmd, seam_score
from gem3d.sampling.windows import window_boundaries
from gem3d.segmentation import compare_real_vs_augmented
from gem3d.store import MANIFEST, init_store, publish_case, read_case, stage_case, write_table_atomic
from gem3d.synthesis import SynthesisPlan, SyntheticVolume
from gem3d.synthesis.records import sampler_record
from gem3d.synthetic_store import list_synthetic, read_synthetic, write_synthetic

WEIGHTS_SHA256 = "b" * 64


def bench_config(size: int) -> Config:
    """Small budgets: the networks the evaluation trains are not what is measured."""
    return Config(
        data=DataConfig(window_length=8, in_plane_size=size),
        evaluation=EvaluationConfig(feature_steps=10, segmentation_steps=3, lineage_entries=2),
    )


def phantom(rng: np.random.Generator, slices: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid with a lesion and noise in [-1, 1], and its label."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (slices, size, size)), indexing="ij")
    body = x**2 / 0.7 + y**2 / 0.85 + z**2 / 0.9 < 1
    lesion = (x - rng.uniform(-0.3, 0.3)) ** 2 + (y + 0.2) ** 2 + z**2 < 0.04
    image = np.where(body, 0.1, -1.0) + 0.6 * lesion + rng.normal(0, 0.05, body.shape) * body
    return np.clip(image, -1, 1).astype(np.float32), lesion.astype(np.uint8)


def build(root: Path, cases: int, slices: int, size: int, config: Config) -> tuple[Path, Path, Path]:
    """Real store (every fourth case held out as test), synthetic store and a models folder naming the weights."""
    store = init_store(root / "store.zarr", {"labels": {"0": "background", "1": "lesion"}})
    synthetic = root / "synthetic.zarr"
    rng = np.random.default_rng(0)
    rows = []
    for index in range(cases):
        case_id = f"case_{index:03d}"
        split = "test" if index % 4 == 3 else "train"
        image, label = phantom(rng, slices, size)
        publish_case(store, case_id, stage_case(store, case_id, image, label, {}, outline=anatomy_outline(image)))
        rows.append({"case_id": case_id, "split": split})
        if split == "train":
            perturbed = np.clip(image + rng.normal(0, 0.05, image.shape), -1, 1).astype(np.float32)
            write_synthetic(synthetic, [_synthetic_volume(case_id, perturbed, label, config)])
    write_table_atomic(store / MANIFEST, pd.DataFrame(rows))
    models = root / "models" / "stage2"
    models.mkdir(parents=True)
    (models / "model.json").write_text(json.dumps({"sha256": WEIGHTS_SHA256}))  # only its sha256 is read
    return store, synthetic, root / "models"


def _synthetic_volume(case_id: str, image: np.ndarray, label: np.ndarray, config: Config) -> SyntheticVolume:
    plan = SynthesisPlan.create(
        source_case_id=case_id,
        source_mask_sha256="0" * 64,
        setting="ic",
        variant=0,
        seed=0,
        start_slice=len(image) // 2,
        informed={"mode": "chosen", "case_id": case_id, "slice_index": len(image) // 2},
        checkpoint_sha256=WEIGHTS_SHA256,
        config_hash="bench",
    )
    record = LineageRecord(
        synthetic_id=plan.synthetic_id,
        source_case_id=case_id,
        start_slice=plan.start_slice,
        sampler=sampler_record(config),
        checkpoints=[CheckpointRef(role="stage2", path="bench", sha256=WEIGHTS_SHA256)],
    )
    return SyntheticVolume(plan, image, label, record)


def all_in_memory(store: Path, synthetic: Path, config: Config) -> None:
    """The old approach: every case and every synthetic volume in memory, every slice concatenated."""
    manifest = pd.read_parquet(store / MANIFEST)
    split = dict(zip(manifest["case_id"], manifest["split"], strict=True))
    real = {case: read_case(store, case) for case in manifest["case_id"]}
    test_ids = sorted(case for case, name in split.items() if name == "test")
    train_ids = sorted(case for case, name in split.items() if name == "train")
    slices = volume_slices([real[case][0] for case in train_ids])
    targets = np.concatenate([slice_targets(real[case][1], 2) for case in train_ids])
    extractor = train_feature_extractor(slices, targets, config.seed, config.evaluation.feature_steps)
    volumes = [read_synthetic(synthetic, synthetic_id) for synthetic_id in list_synthetic(synthetic)]
    real_features = extractor.extract(volume_slices([real[case][0] for case in test_ids + train_ids]))
    synthetic_features = extractor.extract(volume_slices([image for image, _, _ in volumes]))
    frechet_distance(real_features, synthetic_features)
    mmd(*(_bounded(features) for features in (real_features, synthetic_features)))
    for image, _, record in volumes:
        seam_score(image, window_boundaries(len(image), record.start_slice, 8, 1, "both"))
    compare_real_vs_augmented(
        [real[case] for case in train_ids],
        [(image, mask) for image, mask, _ in volumes],
        [real[case] for case in test_ids],
        2,
        config.evaluation.segmentation_steps,
        config.seed,
    )


def _bounded(features: np.ndarray) -> np.ndarray:
    reservoir = FeatureReservoir(MMD_SAMPLE, 0)
    reservoir.update(features)
    return reservoir.sample


def measure(approach: str, cases: int, slices: int, size: int) -> dict:
    """Build the stores, then run one approach under tracemalloc; peaks in MiB."""
    config = bench_config(size)
    with tempfile.TemporaryDirectory() as folder:
        store, synthetic, models = build(Path(folder), cases, slices, size, config)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        if approach == "streaming":
            result = evaluate(store, synthetic, config, models)
            assert len(result.evaluated) == len(list_synthetic(synthetic)) and not result.left_out
        else:
            all_in_memory(store, synthetic, config)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"tracemalloc_mib": peak / 2**20, "maxrss_growth_mib": max(after - before, 0) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=8, help="N (the second size is 4N)")
    parser.add_argument("--slices", type=int, default=96)
    parser.add_argument("--size", type=int, default=32, help="in-plane size")
    parser.add_argument("--child", nargs=2, metavar=("APPROACH", "CASES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.slices, args.size)))
        return
    peaks = {}
    for approach in ("all-in-memory", "streaming"):
        for cases in (args.cases, 4 * args.cases):
            command = [sys.executable, __file__, "--child", approach, str(cases)]
            command += ["--slices", str(args.slices), "--size", str(args.size)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            peaks[approach, cases] = json.loads(done.stdout.strip().splitlines()[-1])
    volume_mib = args.slices * args.size**2 * 5 / 2**20
    shape = f"{args.slices}x{args.size}x{args.size}"
    print(f"{args.cases} and {4 * args.cases} cases of {shape} ({volume_mib:.1f} MiB each with its label)")
    for approach in ("all-in-memory", "streaming"):
        small, large = peaks[approach, args.cases], peaks[approach, 4 * args.cases]
        print(
            f"{approach:>14}: tracemalloc peak {small['tracemalloc_mib']:7.1f} -> {large['tracemalloc_mib']:7.1f} MiB "
            f"(4N/N {large['tracemalloc_mib'] / small['tracemalloc_mib']:.2f}); max RSS growth "
            f"{small['maxrss_growth_mib']:7.1f} -> {large['maxrss_growth_mib']:7.1f} MiB"
        )
    baseline, streaming = peaks["all-in-memory", 4 * args.cases], peaks["streaming", 4 * args.cases]
    ratio = baseline["tracemalloc_mib"] / streaming["tracemalloc_mib"]
    print(f"at {4 * args.cases} cases the all-in-memory peak is {ratio:.1f}x the streaming peak")


if __name__ == "__main__":
    main()
