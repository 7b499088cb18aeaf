"""Builders shared by the synthesis tests: a tiny real store and tiny (untrained) model bundles on disk."""

from __future__ import annotations

from pathlib import Path

import torch

from gem3d.checkpoints import ModelSpec, build_model, save_model
from gem3d.config import Config, DataConfig, DenoiserConfig, EditConfig, SamplingConfig
from gem3d.ingest import build_manifest, process_case
from gem3d.io.layouts import discover_dataset
from gem3d.splits import assign_splits
from gem3d.store import MANIFEST, init_store, publish_case, read_manifest, write_table_atomic
from gem3d.synthesis import LoadedModels, load_models
from tests.builders import write_msd_dataset

NUM_CLASSES = 2
CONFIG = Config(
    data=DataConfig(window_length=4, in_plane_size=16),
    denoiser=DenoiserConfig(
        model_channels=16, channel_mult=(1,), attention_levels=(False,), head_channels=16, temporal_attention=True
    ),
    sampling=SamplingConfig(steps=3, volumes_per_batch=4, decode_chunk=4),
    edits=EditConfig(shift_labels=(1,), flip_probability=0.5, shift_voxels=(1, 2)),
)


def build_store(root: Path, cases: int = 4, raw: Path | None = None) -> Path:
    """Ingest a tiny MSD dataset (or the dataset at `raw`) into a real Zarr store with a manifest (2 train, 1 val,
    1 test for 4 cases)."""
    info = discover_dataset(raw or write_msd_dataset(root / "raw", cases=cases))
    store = init_store(
        root / "store.zarr",
        {"modality": info.modality, "labels": {str(k): v for k, v in sorted(info.labels.items())}},
    )
    case_ids = []
    for ref in info.cases:
        outcome = process_case(ref, info, CONFIG.data, store, "data-hash")
        publish_case(store, outcome.case_id, outcome.staged)
        case_ids.append(outcome.case_id)
    splits = assign_splits(case_ids, CONFIG.data.split_fractions, 0, {})
    write_table_atomic(store / MANIFEST, build_manifest(store, case_ids, splits))
    return store


def _perturb_zero_weights(module: torch.nn.Module, seed: int) -> None:
    """Give zero-initialised layers small random weights, so the untrained networks depend on their inputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim > 1 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def build_models(models_dir: Path, config: Config = CONFIG) -> Path:
    """Bundles `stage2`, `baseline` and `slicegen` of untrained tiny networks, saved like training saves them."""
    specs = {
        "stage2": ModelSpec("stage2", NUM_CLASSES, use_informed_slice=True, volumetric=True),
        "baseline": ModelSpec("baseline", NUM_CLASSES, use_informed_slice=False, volumetric=True),
        "slicegen": ModelSpec("slicegen", NUM_CLASSES),
    }
    for index, (role, spec) in enumerate(specs.items()):
        torch.manual_seed(index)
        module = build_model(spec, config)
        _perturb_zero_weights(module, index)
        save_model(module, spec, config, models_dir / role, extra={})
    return models_dir


def build_setup(root: Path, config: Config = CONFIG) -> tuple[Path, Path, LoadedModels, list[str]]:
    """`build_store` and `build_models` under `root`, the models loaded on CPU, and the store's case ids sorted."""
    store = build_store(root)
    models_dir = build_models(root / "models", config)
    return store, models_dir, load_models(models_dir, config, device="cpu"), sorted(read_manifest(store)["case_id"])
