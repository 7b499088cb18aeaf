"""Regenerating a published synthetic volume from what its store records, to show an auditor it reproduces.

Each volume is published with a generation record (full config, real store, models folder, denoiser role)
beside its plan and lineage. `regenerate` loads the same checkpoints (refusing changed ones, and masks that
changed since), samples the plan again, and compares the result with the stored volume voxel by voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gem3d.config import Config, config_hash
from gem3d.errors import StoreError
from gem3d.metrics import psnr
from gem3d.synthesis import SynthesisPlan, load_models, synthesize
from gem3d.synthetic_store import read_synthetic, synthetic_attributes

REPRODUCED_DB = 40.0
"""A regenerated volume counts as reproduced when bit-identical or at least this PSNR from the stored one:
volumes sampled alone differ from the same volumes sampled in a shared batch by float rounding only."""


@dataclass(frozen=True)
class Regeneration:
    """How a regenerated volume compares with the published one (images in model units, [-1, 1])."""

    synthetic_id: str
    identical: bool
    mask_identical: bool
    max_abs_difference: float
    psnr_db: float

    @property
    def reproduced(self) -> bool:
        return self.mask_identical and (self.identical or self.psnr_db >= REPRODUCED_DB)


def generation_record(config: Config, real_store: str | Path, models_dir: str | Path, role: str) -> dict:
    """What `regenerate` needs besides the plan: stored with each published volume."""
    return {
        "config": config.model_dump(mode="json"),
        "real_store": str(Path(real_store).resolve()),
        "models_dir": str(Path(models_dir).resolve()),
        "role": role,
    }


def regenerate(
    synthetic_store: str | Path, synthetic_id: str, device: str | torch.device | None = None
) -> Regeneration:
    """Sample the published volume `synthetic_id` again from its plan and recorded generation settings.

    Raises `StoreError` when the volume has no generation record, its recorded config does not hash to the
    plan's, or the source mask changed; `ValueError` when the checkpoints on disk are not the ones it names.
    """
    attributes = synthetic_attributes(synthetic_store, synthetic_id)
    generation = attributes.get("generation")
    if generation is None:
        raise StoreError(synthetic_store, f"{synthetic_id} has no generation record, so it cannot be regenerated")
    config = Config.model_validate(generation["config"])
    plan = SynthesisPlan.model_validate(attributes["plan"])
    if config_hash(config) != plan.config_hash:
        raise StoreError(synthetic_store, f"{synthetic_id}: the recorded config does not hash to the plan's")
    models = load_models(generation["models_dir"], config, role=generation["role"], device=device)
    [volume] = synthesize([plan], generation["real_store"], models, config)
    image, mask, _ = read_synthetic(synthetic_store, synthetic_id)
    return Regeneration(
        synthetic_id=synthetic_id,
        identical=bool(np.array_equal(volume.image, image)),
        mask_identical=bool(np.array_equal(volume.mask, mask)),
        max_abs_difference=float(np.abs(volume.image - image).max()),
        psnr_db=psnr(volume.image, image),
    )
