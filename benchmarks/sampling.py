"""Sampling speed: our batched DPM-Solver++ sampler against the paper's reference procedure, at equal fidelity.

Both regenerate the same held-out volumes with the same trained model (each from its own mask and its own
informed slice, the paper's test setting) and are scored by PSNR against the real volume:
- reference: DDIM with `--reference-steps` steps (eta 1), one window at a time (upward chain, then downward),
  one volume per batch;
- ours: every chain of every volume advancing in lockstep in one batch, DPM-Solver++ at the smallest step count
  of `--steps` whose mean PSNR is within `--tolerance-db` of the reference's. When none is (a deterministic
  solver need not match the stochastic reference with a weakly trained model), batched DDIM with eta 1 at the
  smallest such step count, so the speed-up is still measured at equal fidelity.
Prints sequential network calls and wall time per volume for each and the ratios to the reference.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gem3d.checkpoints import read_bundle_meta
from gem3d.config import Config, config_hash, load_config
from gem3d.metrics import psnr
from gem3d.sampling.propagation import SamplerSettings, VolumeRequest, count_network_calls
from gem3d.store import read_case, read_manifest
from gem3d.synthesis import LoadedModels, SynthesisPlan, load_models, plan_test_regeneration, synthesize

HELD_OUT_SPLITS = ("test", "val")


@dataclass
class Outcome:
    """One sampling procedure on the benchmark volumes: its settings, cost and fidelity."""

    sampler: str
    steps: int
    calls_per_volume: float
    seconds_per_volume: float
    mean_psnr: float


def with_sampling(config: Config, **update) -> Config:
    """`config` with some sampling fields replaced."""
    return config.model_copy(update={"sampling": config.sampling.model_copy(update=update)})


def held_out_cases(store: Path, count: int) -> list[tuple[str, str]]:
    """Up to `count` (case id, split) pairs: the test split first, topped up from the validation split."""
    manifest = read_manifest(store)
    chosen = []
    for split in HELD_OUT_SPLITS:
        chosen += [(case, split) for case in sorted(manifest.loc[manifest["split"] == split, "case_id"])]
    if not chosen:
        raise SystemExit(f"{store} has no test or validation cases to regenerate")
    return chosen[:count]


def calls_per_volume(plans: list[SynthesisPlan], slices: list[int], config: Config, batch_chains: bool) -> float:
    """Sequential denoiser calls per volume, from the batch plan `synthesize` follows for these settings."""
    settings = SamplerSettings.from_config(config.sampling)
    # only slice counts and start slices shape the batch plan; one shared frame shape stands for the real ones
    requests = [
        VolumeRequest(torch.zeros(count, 1, 1, 1), torch.zeros(1, 1, 1), plan.start_slice, plan.seed)
        for plan, count in zip(plans, slices, strict=True)
    ]
    step, length = config.sampling.volumes_per_batch, config.data.window_length
    calls = sum(
        count_network_calls(config.diffusion, settings, requests[first : first + step], length, batch_chains)
        for first in range(0, len(requests), step)
    )
    return calls / len(plans)


def run(
    plans: list[SynthesisPlan],
    store: Path,
    models: LoadedModels,
    config: Config,
    truths: list[np.ndarray],
    batch_chains: bool,
) -> Outcome:
    """Regenerate the planned volumes with `config`'s sampler, timing it and scoring each against its truth."""
    synchronise(models.device)
    began = time.perf_counter()
    volumes = synthesize(plans, store, models, config, batch_chains=batch_chains)
    synchronise(models.device)
    seconds = time.perf_counter() - began
    return Outcome(
        sampler=config.sampling.sampler,
        steps=config.sampling.steps,
        calls_per_volume=calls_per_volume(plans, [len(t) for t in truths], config, batch_chains),
        seconds_per_volume=seconds / len(plans),
        mean_psnr=float(np.mean([psnr(v.image, truth) for v, truth in zip(volumes, truths, strict=True)])),
    )


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    """The device in words: GPU name, or CPU model with torch's thread count."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        model = names[0] if names else model
    return f"cpu ({model}; torch threads {torch.get_num_threads()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="a trained work directory (gem3d run)")
    parser.add_argument("--config", help="config file or preset; default: the one stage 2 was trained with")
    parser.add_argument("--cases", type=int, default=1, help="held-out volumes to regenerate")
    parser.add_argument("--reference-steps", type=int, default=200, help="DDIM steps of the reference")
    parser.add_argument("--steps", default="5,10,20,50", help="step counts to try for ours")
    parser.add_argument("--tolerance-db", type=float, default=0.5, help="allowed mean PSNR shortfall")
    parser.add_argument("--device", default=None, help="torch device; default: the config's (auto: CUDA if any)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared CPU, idle-spinning OpenMP threads slow small networks "
        "down many times over; 0 keeps torch's default)",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    store, models_dir = args.workdir / "store.zarr", args.workdir / "models"
    meta = read_bundle_meta(models_dir / "stage2")
    base = load_config(args.config) if args.config else Config.model_validate(meta["config"])
    models = load_models(models_dir, base, "stage2", device=args.device)
    cases = held_out_cases(store, args.cases)
    plans = plan_test_regeneration(
        store, [case for case, _ in cases], base, meta["sha256"], config_hash(base), base_seed=base.seed
    )
    truths = [read_case(store, plan.source_case_id)[0] for plan in plans]
    shapes = sorted({truth.shape for truth in truths})
    print(f"device: {describe_device(models.device)}")
    print(f"model: {models_dir / 'stage2'} (sha256 {meta['sha256'][:12]}), config {base.name} {config_hash(base)}")
    starts = [plan.start_slice for plan in plans]
    listed = [f"{case} ({split}, start slice {start})" for (case, split), start in zip(cases, starts, strict=True)]
    print(
        f"volumes: {', '.join(listed)}"
        f"; shape {', '.join(map(str, shapes))}; window {base.data.window_length}, overlap {base.sampling.overlap}"
    )

    reference_config = with_sampling(base, sampler="ddim", steps=args.reference_steps, eta=1.0, volumes_per_batch=1)
    batched = with_sampling(base, volumes_per_batch=len(plans))
    run(plans[:1], store, models, with_sampling(batched, sampler="dpm_solver", steps=1), truths[:1], True)
    reference = run(plans, store, models, reference_config, truths, batch_chains=False)
    print(
        f"reference: DDIM {reference.steps} steps eta 1, one window at a time, one volume per batch: "
        f"mean PSNR {reference.mean_psnr:.2f} dB, {reference.seconds_per_volume:.1f} s per volume",
        flush=True,
    )
    floor = reference.mean_psnr - args.tolerance_db
    steps = sorted(int(value) for value in args.steps.split(","))

    def sweep(name: str, sampler: str, eta: float) -> list[Outcome]:
        """Batched runs at increasing step counts until one is within the tolerance (or the list ends)."""
        tried = []
        for count in steps:
            config = with_sampling(batched, sampler=sampler, steps=count, eta=eta)
            tried.append(run(plans, store, models, config, truths, batch_chains=True))
            print(f"  {name} {count:>3} steps, batched: mean PSNR {tried[-1].mean_psnr:.2f} dB", flush=True)
            if tried[-1].mean_psnr >= floor:
                break
        return tried

    solver = sweep("DPM-Solver++", "dpm_solver", 0.0)
    rows = [(f"reference: DDIM {reference.steps} eta 1, sequential, 1 vol/batch", reference)]
    rows.append((f"DPM-Solver++ {solver[-1].steps}, batched, {len(plans)} vol/batch", solver[-1]))
    if solver[-1].mean_psnr >= floor:
        ours = solver[-1]
        print(f"picked: DPM-Solver++ {ours.steps} steps, the smallest tried within {args.tolerance_db} dB")
    else:
        print(f"no DPM-Solver++ step count of {steps} is within {args.tolerance_db} dB; trying batched DDIM eta 1")
        stochastic = sweep("DDIM eta 1", "ddim", 1.0)
        ours = stochastic[-1]
        rows.append((f"DDIM {ours.steps} eta 1, batched, {len(plans)} vol/batch", ours))
        print(
            f"picked: DDIM eta 1 {ours.steps} steps, batched, the smallest tried within {args.tolerance_db} dB"
            if ours.mean_psnr >= floor
            else f"nothing tried is within {args.tolerance_db} dB: ratios below are for DDIM eta 1 {ours.steps}"
        )
    print()
    print(f"{'procedure':<48} {'calls/volume':>13} {'s/volume':>10} {'PSNR dB':>9}")
    for name, outcome in rows:
        cost = f"{outcome.calls_per_volume:>13.1f} {outcome.seconds_per_volume:>10.2f}"
        print(f"{name:<48} {cost} {outcome.mean_psnr:>9.2f}")
    for name, outcome in rows[1:]:
        calls = reference.calls_per_volume / outcome.calls_per_volume
        print(
            f"reference / {name.split(',')[0]}: network calls {calls:.1f}x, "
            f"wall time {reference.seconds_per_volume / outcome.seconds_per_volume:.1f}x, "
            f"PSNR {outcome.mean_psnr - reference.mean_psnr:+.2f} dB{' (picked)' if outcome is ours else ''}"
        )


if __name__ == "__main__":
    main()
