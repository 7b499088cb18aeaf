"""Run-to-run reproducibility of sampling on this device, with default and with deterministic kernels.

Regenerates the same held-out volumes (own mask, own informed slice, fixed seeds) twice in each mode and
compares the two runs voxel by voxel: bit-identical or not, largest absolute difference (model units, [-1, 1])
and PSNR between the runs. Our stated tolerance: reruns with the same inputs, config, seed, device and
software agree bit for bit on CPU and with `runtime.deterministic: true` on GPU, and to at least
`TOLERANCE_DB` PSNR with the default GPU kernels. Also prints the time ratio deterministic / default.
Needs torch and the gem3d library only (no Prefect or MLflow), so it runs on a bare GPU box.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sampling import describe_device, held_out_cases, synchronise  # the sibling script benchmarks/sampling.py

from gem3d.checkpoints import read_bundle_meta
from gem3d.config import Config, config_hash
from gem3d.metrics import PSNR_CAP_DB, psnr
from gem3d.synthesis import load_models, plan_test_regeneration, synthesize

TOLERANCE_DB = 40.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=str, required=True, help="a trained work directory (gem3d run)")
    parser.add_argument("--cases", type=int, default=2, help="held-out volumes to regenerate per run")
    parser.add_argument("--device", default=None, help="torch device; default: the config's (auto: CUDA if any)")
    args = parser.parse_args()

    store, models_dir = f"{args.workdir}/store.zarr", f"{args.workdir}/models"
    meta = read_bundle_meta(f"{models_dir}/stage2")
    base = Config.model_validate(meta["config"])
    models = load_models(models_dir, base, "stage2", device=args.device)
    cases = [case for case, _ in held_out_cases(store, args.cases)]
    plans = plan_test_regeneration(store, cases, base, meta["sha256"], config_hash(base), base_seed=base.seed)
    print(
        f"device: {describe_device(models.device)}; {len(plans)} volumes per run, {base.sampling.sampler} "
        f"{base.sampling.steps} steps"
    )

    runs: dict[bool, list[list[np.ndarray]]] = {}
    seconds: dict[bool, float] = {}
    for deterministic in (False, True):
        config = base.model_copy(update={"runtime": base.runtime.model_copy(update={"deterministic": deterministic})})
        runs[deterministic], seconds[deterministic] = [], 0.0
        for _ in range(2):
            synchronise(models.device)
            began = time.perf_counter()
            volumes = synthesize(plans, store, models, config)
            synchronise(models.device)
            seconds[deterministic] += (time.perf_counter() - began) / 2
            runs[deterministic].append([volume.image for volume in volumes])

    print(f"\n{'kernels':<15} {'identical':>9} {'max |diff|':>11} {'min PSNR dB':>12} {'s per run':>10}")
    for deterministic, (first, second) in runs.items():
        identical = all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
        largest = max(float(np.abs(a - b).max()) for a, b in zip(first, second, strict=True))
        agreement = min(psnr(a, b) for a, b in zip(first, second, strict=True))
        name = "deterministic" if deterministic else "default"
        print(
            f"{name:<15} {'yes' if identical else 'no':>9} {largest:>11.2e} {agreement:>12.1f} "
            f"{seconds[deterministic]:>10.2f}"
        )
    across = min(psnr(a, b) for a, b in zip(runs[False][0], runs[True][0], strict=True))
    print(f"default vs deterministic kernels: min PSNR {across:.1f} dB (capped at {PSNR_CAP_DB:.0f})")
    print(f"time deterministic / default: {seconds[True] / seconds[False]:.2f}")
    default_ok = min(psnr(a, b) for a, b in zip(*runs[False], strict=True)) >= TOLERANCE_DB
    strict_ok = all(np.array_equal(a, b) for a, b in zip(*runs[True], strict=True))
    print(
        f"tolerance (deterministic: identical; default: >= {TOLERANCE_DB:.0f} dB): "
        f"{'met' if default_ok and strict_ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
