"""Tiny real Zarr stores and a tiny configuration for the data and training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gem3d.anatomy import anatomy_outline
from gem3d.config import Config
from gem3d.store import init_store, publish_case, stage_case, write_table_atomic

SIZE = 16
STAGE_NAMES = ("autoencoder", "stage1", "stage2", "slicegen", "baseline")
LABELS = {"0": "background", "1": "one", "2": "two"}


def phantom(rng: np.random.Generator, num_slices: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A disc whose radius changes along Z with two labelled regions inside: image in [-1, 1], labels 0..2."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    image = np.full((num_slices, size, size), -1.0, dtype=np.float32)
    label = np.zeros((num_slices, size, size), dtype=np.uint8)
    for z in range(num_slices):
        radius = 0.6 + 0.2 * np.sin(z / 2 + rng.uniform(0, np.pi))
        body = xx**2 + yy**2 < radius**2
        lesion = (xx - 0.2) ** 2 + yy**2 < (radius / 3) ** 2
        image[z][body] = 0.2 + 0.05 * rng.standard_normal(body.sum())
        image[z][lesion] = 0.8
        label[z][body & (yy < -0.2)] = 1
        label[z][lesion] = 2
    return np.clip(image, -1, 1), label


def write_store(root: Path, cases: dict[str, tuple[int, str]], seed: int = 0) -> Path:
    """A published store with `cases` {case_id: (num_slices, split)} and its manifest."""
    store = init_store(root, {"labels": LABELS, "in_plane_size": SIZE, "window_length": 4})
    rng = np.random.default_rng(seed)
    rows = []
    for case_id, (num_slices, split) in cases.items():
        image, label = phantom(rng, num_slices)
        publish_case(store, case_id, stage_case(store, case_id, image, label, {}, outline=anatomy_outline(image)))
        rows.append({"case_id": case_id, "split": split, "shape_z": num_slices})
    write_table_atomic(store / "manifest.parquet", pd.DataFrame(rows))
    return store


def tiny_config(train: dict | None = None, **sections: dict) -> Config:
    """In-plane 16, windows of 4, a one-level UNet with 16 channels; `train` overrides per-stage settings."""
    stage = {"steps": 10, "learning_rate": 2e-3, "batch_windows": 1, "warmup_steps": 2, "checkpoint_every": 5}
    raw = {
        "seed": 3,
        "data": {"window_length": 4, "in_plane_size": SIZE},
        "denoiser": {
            "model_channels": 16,
            "channel_mult": [1],
            "attention_levels": [False],
            "head_channels": 16,
            "num_res_blocks": 1,
        },
        "autoencoder": {"block_channels": [8, 16], "latent_channels": 2},
        "train": {"device": "cpu", **{name: stage for name in STAGE_NAMES}},
        "sampling": {"eta": 0.0},
    }
    for name, value in (train or {}).items():
        raw["train"][name] = {**stage, **value} if isinstance(value, dict) else value
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return Config.model_validate(raw)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> Path:
    """Three training cases (6, 9 and 12 slices), one validation case and one test case; read-only."""
    cases = {
        "case_a": (6, "train"),
        "case_b": (9, "train"),
        "case_c": (12, "train"),
        "case_v": (7, "val"),
        "case_t": (5, "test"),
    }
    return write_store(tmp_path_factory.mktemp("store") / "store.zarr", cases)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a shared 2-core machine the threads mostly wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
