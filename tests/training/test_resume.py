"""Training-state checkpoints: atomic, the latest two kept, hashed, `weights_only` loadable; exact resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gem3d.errors import StoreError
from gem3d.lineage import sha256_file
from gem3d.training import train_stage
from gem3d.training.state import restore_rng_state, rng_state
from tests.training.conftest import tiny_config


def _assert_equal_tensors(left: object, right: object, where: str = "") -> None:
    """Every tensor equal (torch.equal) and every other value equal, recursively."""
    if isinstance(left, torch.Tensor):
        assert torch.equal(left, right), where
    elif isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            _assert_equal_tensors(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list | tuple):
        assert len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            _assert_equal_tensors(a, b, f"{where}[{index}]")
    else:
        assert left == right, where


def test_ten_steps_then_resume_for_ten_equals_twenty_straight(tmp_path: Path, small_store: Path) -> None:
    twenty = tiny_config({"stage1": {"steps": 20, "checkpoint_every": 5, "batch_windows": 2}})
    ten = tiny_config({"stage1": {"steps": 10, "checkpoint_every": 5, "batch_windows": 2}})
    written: list[Path] = []
    steps: list[int] = []
    straight = train_stage(
        "stage1",
        twenty,
        small_store,
        tmp_path / "straight",
        on_checkpoint=written.append,
        on_metrics=lambda step, metrics: steps.append(step) if "loss" in metrics else None,
    )
    assert steps == list(range(1, 21))
    assert [path.name for path in written] == [f"step_{step:07d}.pt" for step in (5, 10, 15, 20)]
    folder = tmp_path / "straight" / "stage1" / "checkpoints"
    assert sorted(path.name for path in folder.glob("*.pt")) == ["step_0000015.pt", "step_0000020.pt"]
    index = json.loads((folder / "index.json").read_text())["checkpoints"]
    assert [entry["step"] for entry in index] == [15, 20]
    assert all(sha256_file(folder / entry["file"]) == entry["sha256"] for entry in index)
    assert straight.checkpoint == folder / "step_0000020.pt" and straight.checkpoint_sha256 == index[-1]["sha256"]

    first = train_stage("stage1", ten, small_store, tmp_path / "split")
    assert first.losses == straight.losses[:10]
    resumed = train_stage("stage1", twenty, small_store, tmp_path / "split", resume=True)
    assert resumed.losses == straight.losses and resumed.steps == 20
    expected = torch.load(straight.checkpoint, weights_only=True)
    actual = torch.load(resumed.checkpoint, weights_only=True)
    for key in ("network", "ema", "optimizer", "lr_schedule"):
        _assert_equal_tensors(actual[key], expected[key], key)
    # Python's global `random` is shared with every thread of the test process (Prefect's services draw
    # jittered intervals from it), so only the generators training draws from are compared.
    for key in ("torch", "numpy"):
        _assert_equal_tensors(actual["rng"][key], expected["rng"][key], f"rng.{key}")
    assert resumed.sha256 == straight.sha256  # the EMA bundle's weights, byte for byte

    done = train_stage("stage1", twenty, small_store, tmp_path / "split", resume=True)
    assert done.losses == straight.losses and done.sha256 == straight.sha256


def test_a_changed_checkpoint_is_refused_on_resume(tmp_path: Path, small_store: Path) -> None:
    config = tiny_config({"stage1": {"steps": 3, "checkpoint_every": 3}})
    result = train_stage("stage1", config, small_store, tmp_path)
    result.checkpoint.write_bytes(result.checkpoint.read_bytes() + b"tampered")
    with pytest.raises(StoreError, match="sha256"):
        train_stage("stage1", config, small_store, tmp_path, resume=True)


def test_a_fresh_run_removes_old_checkpoints(tmp_path: Path, small_store: Path) -> None:
    train_stage("stage1", tiny_config({"stage1": {"steps": 6, "checkpoint_every": 3}}), small_store, tmp_path)
    train_stage("stage1", tiny_config({"stage1": {"steps": 2, "checkpoint_every": 3}}), small_store, tmp_path)
    folder = tmp_path / "stage1" / "checkpoints"
    assert sorted(path.name for path in folder.glob("*.pt")) == ["step_0000002.pt"]


def test_the_baseline_resumes_exactly_across_its_two_phases(tmp_path: Path, small_store: Path) -> None:
    both = tiny_config({"baseline": {"steps": 4, "checkpoint_every": 4}, "stage2": {"steps": 3, "checkpoint_every": 4}})
    first_only = tiny_config({"baseline": {"steps": 4, "checkpoint_every": 4}, "stage2": {"steps": 0}})
    straight = train_stage("baseline", both, small_store, tmp_path / "straight")
    train_stage("baseline", first_only, small_store, tmp_path / "split")
    resumed = train_stage("baseline", both, small_store, tmp_path / "split", resume=True)
    assert len(resumed.losses) == 7 and resumed.losses == straight.losses
    assert resumed.sha256 == straight.sha256


def test_rng_state_round_trips_every_generator() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    saved = rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    restore_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(again[0], expected[0])
    assert np.array_equal(again[1], expected[1])
    assert again[2] == expected[2]
