"""Usefulness: MONAI UNet training, Dice per label, and the real vs real+synthetic comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gem3d.segmentation import compare_real_vs_augmented, dice_per_label, train_segmenter
from gem3d.volume_sets import StoredVolumes
from tests.evaluation import blob_case, write_blob_store


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread than on two contended cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cases() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(0)
    return {
        "real": [blob_case(rng) for _ in range(6)],
        "synthetic": [blob_case(rng) for _ in range(6)],
        "test": [blob_case(rng) for _ in range(2)],
    }


class Threshold(nn.Module):
    """An oracle for blob_case volumes: class 1 where the image is bright, else background."""

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        foreground = (slices > 0).float()
        return torch.cat([1 - foreground, foreground], dim=1)  # (N, 2, H, W)


class Background(nn.Module):
    """Predicts background everywhere."""

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(slices), torch.zeros_like(slices)], dim=1)


def test_dice_is_one_for_a_perfect_model_and_zero_for_an_empty_one(cases) -> None:
    assert dice_per_label(Threshold(), cases["test"], num_classes=2) == {1: pytest.approx(1.0)}
    assert dice_per_label(Background(), cases["test"], num_classes=2) == {1: pytest.approx(0.0)}


def test_unet_learns_the_blob(cases) -> None:
    model = train_segmenter(cases["real"], num_classes=2, steps=60, seed=0)
    assert dice_per_label(model, cases["test"], num_classes=2)[1] > 0.7


def test_training_is_deterministic_for_a_seed(cases) -> None:
    first = train_segmenter(cases["real"][:2], num_classes=2, steps=3, seed=5)
    again = train_segmenter(cases["real"][:2], num_classes=2, steps=3, seed=5)
    for (name, value), (_, other) in zip(first.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(value, other), name


def test_comparison_reports_both_arms_and_both_amounts(cases) -> None:
    rows = compare_real_vs_augmented(
        cases["real"],
        cases["synthetic"],
        cases["test"],
        num_classes=2,
        steps=8,
        seed=0,
        scarce_fraction=0.25,
        synthetic_sources=[{index} for index in range(6)],
    )
    keyed = {(row["setting"], row["amount"]): row for row in rows}
    assert len(rows) == 4 and set(keyed) == {
        (setting, amount) for setting in ("real", "real+synthetic") for amount in ("all", "scarce")
    }
    assert all(row["label"] == 1 and 0.0 <= row["dice"] <= 1.0 for row in rows)
    assert (keyed["real", "all"]["n_real"], keyed["real", "all"]["n_synthetic"]) == (6, 0)
    assert (keyed["real+synthetic", "all"]["n_real"], keyed["real+synthetic", "all"]["n_synthetic"]) == (6, 6)
    # round(0.25 * 6) = 2 real cases; each has exactly one synthetic volume derived from it
    assert (keyed["real", "scarce"]["n_real"], keyed["real", "scarce"]["n_synthetic"]) == (2, 0)
    assert (keyed["real+synthetic", "scarce"]["n_real"], keyed["real+synthetic", "scarce"]["n_synthetic"]) == (2, 2)


def test_comparison_rejects_sources_that_do_not_match_the_synthetic_list(cases) -> None:
    with pytest.raises(ValueError, match="synthetic_sources"):
        compare_real_vs_augmented(
            cases["real"], cases["synthetic"], cases["test"], 2, steps=1, seed=0, synthetic_sources=[{0}]
        )


def test_scarce_arm_takes_only_synthetic_volumes_derived_from_scarce_cases_alone(cases) -> None:
    """A volume whose mask comes from a scarce case but whose informed slice comes from another case stays out."""
    scarce = sorted(np.random.default_rng(0).permutation(6)[:2])  # the draw compare_real_vs_augmented makes
    others = [index for index in range(6) if index not in scarce]
    sources = [{scarce[0]}, {scarce[1]}, {scarce[0], others[0]}, {others[1]}, {scarce[0], scarce[1]}, {others[2]}]
    rows = compare_real_vs_augmented(
        cases["real"], cases["synthetic"], cases["test"], 2, steps=1, seed=0, synthetic_sources=sources
    )
    keyed = {(row["setting"], row["amount"]): row for row in rows}
    assert keyed["real+synthetic", "scarce"]["n_synthetic"] == 3


def test_training_from_the_store_equals_training_on_arrays(cases, tmp_path) -> None:
    store = write_blob_store(tmp_path / "store.zarr", {"a": "train", "b": "train"}, seed=3)
    stored = StoredVolumes(store, ("a", "b"))
    from_store = train_segmenter(stored, num_classes=2, steps=3, seed=1)
    from_arrays = train_segmenter(list(stored.volumes()), num_classes=2, steps=3, seed=1)
    expected = from_arrays.state_dict()
    for name, value in from_store.state_dict().items():
        assert torch.equal(value, expected[name]), name
