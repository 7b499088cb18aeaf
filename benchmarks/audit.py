"""Audit time per synthetic volume at N and 10N volumes (flat is the goal), and the lineage-table rebuild time.

Writes N and 10N small synthetic volumes (8x16x16 by default) with the library (`write_synthetic`, no Prefect),
each record naming the same two source files and one checkpoint (as a real store's volumes share them),
rebuilds the lineage table, then times `audit_synthetic_store` (best of two) on the thread pool and, as the
baseline measured in the same run, with one thread. Prints the audit time per volume at both sizes and their
ratio, the one-thread baseline and its speed-up, and the rebuild time at both sizes. Default run (100 and
1,000): about a minute on 2 cores; measured there (shared with other work): 3.8 and 3.1 ms per volume (ratio
0.82; one thread 4.5 and 4.3), lineage rebuild 0.16 s and 0.67 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from gem3d.lineage import CheckpointRef, LineageRecord, SourceFile, sha256_array, sha256_file
from gem3d.synthesis import SynthesisPlan, SyntheticVolume
from gem3d.synthetic_store import audit_synthetic_store, rebuild_lineage_table, write_synthetic


def shared_files(root: Path, size: int) -> dict[str, Path]:
    """Two source files and a checkpoint of `size` bytes each, named by every volume."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {"image": root / "case_0000.nii.gz", "label": root / "case.nii.gz", "stage2": root / "model.safetensors"}
    for path in files.values():
        path.write_bytes(rng.bytes(size))
    return files


def volume(index: int, shape: tuple[int, int, int], files: dict[str, Path], hashes: dict[str, str]) -> SyntheticVolume:
    """One synthetic volume of random voxels and mask, with a record naming the shared files."""
    rng = np.random.default_rng(index)
    image = rng.uniform(-1, 1, shape).astype(np.float32)
    mask = (rng.random(shape) > 0.7).astype(np.uint8)
    plan = SynthesisPlan.create(
        source_case_id="case",
        source_mask_sha256=sha256_array(mask),
        setting="icma",
        variant=index,
        seed=index,
        start_slice=0,
        informed={"mode": "chosen", "case_id": "case", "slice_index": 0},
        checkpoint_sha256=hashes["stage2"],
        config_hash="benchmark",
    )
    record = LineageRecord(
        synthetic_id=plan.synthetic_id,
        source_case_id="case",
        source_files=[SourceFile(path=str(files[role]), sha256=hashes[role], role=role) for role in ("image", "label")],
        checkpoints=[CheckpointRef(role="stage2", path=str(files["stage2"]), sha256=hashes["stage2"])],
        sampler={"name": "ddim", "steps": 3},
        seed=index,
    )
    return SyntheticVolume(plan, image, mask, record)


def measure(root: Path, count: int, shape: tuple[int, int, int], file_size: int, workers: int | None) -> dict:
    """Build a store of `count` volumes; time its lineage rebuild, its audit, and the one-thread audit."""
    files = shared_files(root / "real", file_size)
    hashes = {role: sha256_file(path) for role, path in files.items()}
    synthetic = root / "synthetic.zarr"
    write_synthetic(synthetic, [volume(index, shape, files, hashes) for index in range(count)])
    started = time.perf_counter()
    rebuild_lineage_table(synthetic)
    rebuild = time.perf_counter() - started
    return {"rebuild": rebuild, "audit": best_audit_time(synthetic, workers), "serial": best_audit_time(synthetic, 1)}


def best_audit_time(synthetic: Path, workers: int | None, repeats: int = 2) -> float:
    """The fastest of `repeats` audits (the first also pays for imports and warm caches), checking each passes."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        report = audit_synthetic_store(synthetic, workers=workers)
        timings.append(time.perf_counter() - started)
        if not report.passed:
            raise RuntimeError(f"the audit of an untouched store failed: {report.problems[:3]}")
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=100, help="N: the small store's volumes (the large has 10N)")
    parser.add_argument("--shape", type=int, nargs=3, default=(8, 16, 16), metavar=("Z", "H", "W"))
    parser.add_argument("--file-size", type=int, default=1 << 20, help="bytes of each shared source/checkpoint file")
    parser.add_argument("--workers", type=int, default=None, help="audit threads (default: the pool's)")
    args = parser.parse_args()
    sizes = (args.volumes, 10 * args.volumes)
    with tempfile.TemporaryDirectory() as folder:
        results = {
            count: measure(Path(folder) / str(count), count, tuple(args.shape), args.file_size, args.workers)
            for count in sizes
        }
    for count, result in results.items():
        print(
            f"{count:>6} volumes: audit {1e3 * result['audit'] / count:.2f} ms/volume "
            f"(one thread {1e3 * result['serial'] / count:.2f}, speed-up {result['serial'] / result['audit']:.2f}x); "
            f"lineage rebuild {result['rebuild']:.2f} s"
        )
    small, large = (results[count] for count in sizes)
    ratio = (large["audit"] / sizes[1]) / (small["audit"] / sizes[0])
    print(f"audit time per volume, {sizes[1]} vs {sizes[0]} volumes: ratio {ratio:.2f} (flat ~1.0 is the goal)")


if __name__ == "__main__":
    main()
