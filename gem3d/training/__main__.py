"""Train one stage without Prefect or MLflow, e.g. on several GPUs under torchrun:

    torchrun --nproc_per_node 8 -m gem3d.training --store STORE --stage stage1 --config configs/paper.yaml \
        --out gem3d-work/models

Every rank runs the same code; rank 0 writes checkpoints and the model bundle.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gem3d.config import load_config
from gem3d.training import STAGES, train_stage


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gem3d.training", description=__doc__)
    parser.add_argument("--store", type=Path, required=True, help="preprocessed Zarr store")
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--config", default=None, help="YAML config or preset name (default: tiny)")
    parser.add_argument("--out", type=Path, required=True, help="models folder; the bundle goes to OUT/STAGE")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--init-from", type=Path, default=None, help="stage-1 bundle (for stage2)")
    args = parser.parse_args()
    init_from = args.init_from or (args.out / "stage1" if args.stage == "stage2" else None)
    result = train_stage(args.stage, load_config(args.config), args.store, args.out, args.resume, init_from)
    print(f"{args.stage}: loss {result.first_loss:.4f} -> {result.final_loss:.4f}, bundle {result.bundle_dir}")


if __name__ == "__main__":
    main()
