"""Does the synthetic data look right and help? The whole pipeline on phantoms, scored as issue 11 asks.

Writes `--cases` phantoms of `--dataset`, splits them so at least 4 are test cases, runs `gem3d run` with the
preset (outline ablation on), then prints one line each: test-setting PSNR / SSIM / MS-SSIM of GEM-3D, GEM-3D
without overlapped inpainting, GEM-3D without the anatomy outline and the baseline; seam ratios (real test
volumes at the same window boundaries as the reference); Frechet distance per setting; and segmentation Dice
per label, real-only vs real + synthetic, with all training cases and with `--scarce-cases`, mean and spread
over `--seeds` segmentation seeds (one trained generator). Writes the figures to `fidelity.json` beside the
report. The last line gives the gains: `psnr gain over baseline X dB; scarce dice gain Y`.

    python benchmarks/fidelity.py --preset tiny --dataset brain --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from gem3d.config import load_config
from gem3d.evaluation import segmentation_comparison
from gem3d.io.phantoms import write_phantom_dataset
from gem3d.store import write_json_atomic

ARMS = {
    "gem3d": "GEM-3D",
    "nooverlap": "GEM-3D, no overlapped inpainting",
    "nooutline": "GEM-3D, no anatomy outline",
    "baseline": "baseline (no informed slice)",
}
SETTINGS = ("ic", "icma", "ig", "igma")


def benchmark_config(
    preset: str, cases: int, test_cases: int, scarce_cases: int, folder: Path, outline_ablation: bool = True
) -> Path:
    """The preset with a split that leaves `test_cases` for testing, the outline ablation on (unless asked off),
    and a scarce fraction giving `scarce_cases` real training cases; written as YAML into `folder`."""
    config = load_config(preset)
    test_fraction = test_cases / cases
    val_fraction = 1 / cases
    train_cases = cases - test_cases - 1
    raw = config.model_dump(mode="json")
    raw["data"]["split_fractions"] = [1 - test_fraction - val_fraction, val_fraction, test_fraction]
    raw["evaluation"]["outline_ablation"] = outline_ablation
    raw["evaluation"]["scarce_fraction"] = min(1.0, scarce_cases / train_cases)
    path = folder / f"{Path(preset).stem}-fidelity.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_pipeline(dataset: Path, config: Path, workdir: Path) -> float:
    """`gem3d run` as a user runs it; its wall time in seconds."""
    command = [sys.executable, "-c", "from flows.cli import app; app()", "run"]
    command += ["--dataset", str(dataset), "--config", str(config), "--workdir", str(workdir)]
    began = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ | {"GEM3D_PROGRESS_INTERVAL": "60"})
    return time.perf_counter() - began


def quarantined(run: Path) -> dict[str, tuple[int, int]]:
    """Per synthetic store of the run: volumes the synthetic contract quarantined, and volumes written in all."""
    counts = {}
    for name in ("synthetic", "evaluation", "deenhanced"):
        store = run / f"{name}.zarr"
        if not store.exists():
            continue
        listing = store / "quarantine.json"
        refused = len(json.loads(listing.read_text())) if listing.exists() else 0
        published = sum(entry.is_dir() for entry in (store / "cases").iterdir()) if (store / "cases").exists() else 0
        counts[name] = (refused, refused + published)
    return counts


def mean_spread(values: list[float]) -> tuple[float, float]:
    finite = [value for value in values if not np.isnan(value)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite))


def dice_table(rows_per_seed: list[list[dict]]) -> dict[str, dict]:
    """Dice per (amount, setting, label): mean and spread over seeds."""
    table: dict[str, dict] = {}
    for rows in rows_per_seed:
        for row in rows:
            key = f"{row['amount']}/{row['setting']}/label{row['label']}"
            table.setdefault(key, {"values": []})["values"].append(row["dice"])
    for entry in table.values():
        entry["mean"], entry["spread"] = mean_spread(entry["values"])
    return table


def scarce_gain(table: dict[str, dict], amount: str = "scarce") -> float:
    """Mean over labels and seeds of (real + synthetic) - (real) Dice."""
    gains = []
    for key, entry in table.items():
        if key.startswith(f"{amount}/real/"):
            partner = table.get(key.replace(f"{amount}/real/", f"{amount}/real+synthetic/"))
            if partner is not None:
                gains += [b - a for a, b in zip(entry["values"], partner["values"], strict=True)]
    return mean_spread(gains)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="tiny, small, or a config file")
    parser.add_argument("--dataset", choices=("brain", "abdomen"), default="brain")
    parser.add_argument("--seeds", type=int, default=3, help="segmentation training seeds")
    parser.add_argument("--cases", type=int, default=16, help="phantom cases written")
    parser.add_argument("--test-cases", type=int, default=4)
    parser.add_argument("--scarce-cases", type=int, default=3, help="real training cases in the scarce setting")
    parser.add_argument("--workdir", type=Path, default=None, help="default: fidelity-work/<preset>-<dataset>")
    parser.add_argument(
        "--no-outline-ablation",
        action="store_true",
        help="skip training and scoring the model without the anatomy outline (a third less time)",
    )
    parser.add_argument(
        "--segmentation-steps",
        type=int,
        default=1000,
        help="training steps of each segmentation network compared over seeds (at least the preset's own): "
        "`gem3d run`'s report trains them briefly to stay within its time budget, which leaves the small labels "
        "nearly unlearned and the comparison noisy",
    )
    args = parser.parse_args()

    workdir = (args.workdir or Path("fidelity-work") / f"{Path(args.preset).stem}-{args.dataset}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = workdir / f"phantoms-{args.dataset}-{args.cases}"
    if not (dataset / "dataset.json").exists():
        write_phantom_dataset(dataset, args.dataset, args.cases)
    config_path = benchmark_config(
        args.preset, args.cases, args.test_cases, args.scarce_cases, workdir, not args.no_outline_ablation
    )
    wall = run_pipeline(dataset, config_path, workdir / "run")

    config = load_config(config_path)
    judge = config.model_copy(
        update={
            "evaluation": config.evaluation.model_copy(
                update={"segmentation_steps": max(args.segmentation_steps, config.evaluation.segmentation_steps)}
            )
        }
    )
    run = workdir / "run"
    metrics = json.loads((run / "report" / "evaluation.json").read_text())["metrics"]
    rows = [
        segmentation_comparison(run / "store.zarr", run / "synthetic.zarr", judge, run / "models", seed)
        for seed in range(config.seed, config.seed + args.seeds)
    ]
    dice = dice_table(rows)
    psnr_gain = metrics.get("gem3d.psnr", float("nan")) - metrics.get("baseline.psnr", float("nan"))
    gain = scarce_gain(dice)
    figures = {
        "preset": args.preset,
        "dataset": args.dataset,
        "cases": args.cases,
        "test_cases": args.test_cases,
        "scarce_cases": args.scarce_cases,
        "seeds": args.seeds,
        "segmentation_steps": judge.evaluation.segmentation_steps,
        "quarantined": quarantined(run),
        "pipeline_seconds": wall,
        "metrics": metrics,
        "dice": dice,
        "psnr_gain_over_baseline_db": psnr_gain,
        "scarce_dice_gain": gain,
        "full_dice_gain": scarce_gain(dice, "all"),
    }
    write_json_atomic(run / "report" / "fidelity.json", figures)

    print(
        f"fidelity benchmark: preset {args.preset}, {args.dataset} phantoms, {args.cases} cases "
        f"({args.test_cases} test), gem3d run {wall:.0f} s"
    )
    print(
        "synthetic contract, quarantined / written: "
        + ", ".join(f"{name} {count}/{total}" for name, (count, total) in figures["quarantined"].items())
    )
    for key, title in ARMS.items():
        if f"{key}.psnr" not in metrics:
            print(f"{title}: not run")
            continue
        values = [metrics[f"{key}.{name}"] for name in ("psnr", "ssim", "ms_ssim")]
        print(f"{title}: PSNR {values[0]:.2f} dB, SSIM {values[1]:.3f}, MS-SSIM {values[2]:.3f}")
    real_seam = metrics.get("real.seam_overlap", float("nan"))
    outline_seam = metrics.get("nooutline.seam_overlap")
    print(
        f"seam ratio: overlapped inpainting {metrics.get('gem3d.seam_overlap', float('nan')):.3f}, "
        f"no overlap {metrics.get('gem3d.seam_no_overlap', float('nan')):.3f}, "
        + ("" if outline_seam is None else f"no outline {outline_seam:.3f}, ")
        + f"real volumes {real_seam:.3f}"
    )
    frechet = ", ".join(f"{name} {metrics[f'{name}.frechet']:.3g}" for name in SETTINGS if f"{name}.frechet" in metrics)
    print(f"Frechet distance: {frechet}; real test vs train {metrics.get('realonly.frechet', float('nan')):.3g}")
    for amount in ("all", "scarce"):
        labels = sorted({key.rsplit("/", 1)[1] for key in dice if key.startswith(f"{amount}/")})
        parts = []
        for label in labels:
            real, mixed = dice[f"{amount}/real/{label}"], dice[f"{amount}/real+synthetic/{label}"]
            parts.append(
                f"{label} {real['mean']:.3f}+-{real['spread']:.3f} -> {mixed['mean']:.3f}+-{mixed['spread']:.3f}"
            )
        setup = f"{args.seeds} seeds, {judge.evaluation.segmentation_steps} steps"
        print(f"Dice {amount} ({setup}), real -> real + synthetic: " + "; ".join(parts))
    print(f"figures: {run / 'report' / 'fidelity.json'}")
    print(f"psnr gain over baseline {psnr_gain:.2f} dB; scarce dice gain {gain:.3f}")


if __name__ == "__main__":
    main()
