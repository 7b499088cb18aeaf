"""The pipeline-trained slice feature extractor and the user-supplied TorchScript extractor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gem3d.errors import MissingFileError, UnreadableFileError
from gem3d.features import (
    FEATURE_DIM,
    SliceEncoder,
    load_torchscript_extractor,
    slice_targets,
    train_feature_extractor,
    train_feature_extractor_on,
    volume_slices,
)
from gem3d.store import read_case
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
def training_set() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    cases = [blob_case(rng) for _ in range(4)]
    slices = volume_slices([image for image, _ in cases])
    targets = np.concatenate([slice_targets(label, num_classes=2) for _, label in cases])
    return slices, targets


def test_slice_targets_hold_class_presence_then_relative_position() -> None:
    label = np.zeros((4, 5, 5), dtype=np.uint8)
    label[1, 2, 2] = 2
    label[2, 0, 0] = 1
    targets = slice_targets(label, num_classes=3)
    np.testing.assert_array_equal(targets[:, :2], [[0, 0], [0, 1], [1, 0], [0, 0]])
    np.testing.assert_allclose(targets[:, 2], [0.0, 0.25, 0.5, 0.75])


def test_trained_extractor_gives_features_that_separate_slices_with_and_without_the_label(training_set) -> None:
    slices, targets = training_set
    extractor = train_feature_extractor(slices, targets, seed=0, steps=60)
    features = extractor.extract(slices)
    assert features.shape == (len(slices), FEATURE_DIM)
    assert np.isfinite(features).all()
    present = targets[:, 0] == 1
    centres = np.stack([features[present].mean(0), features[~present].mean(0)])
    nearest = np.argmin(((features[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == np.where(present, 0, 1)).mean() >= 0.9
    text = extractor.describe()
    assert "60 AdamW steps" in text and f"dimension {FEATURE_DIM}" in text and f"{len(slices)} real" in text


def test_training_is_deterministic_for_a_seed(training_set) -> None:
    slices, targets = training_set
    first = train_feature_extractor(slices, targets, seed=3, steps=5).extract(slices)
    again = train_feature_extractor(slices, targets, seed=3, steps=5).extract(slices)
    other = train_feature_extractor(slices, targets, seed=4, steps=5).extract(slices)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_extract_rejects_slices_without_a_channel_axis(training_set) -> None:
    slices, targets = training_set
    extractor = train_feature_extractor(slices, targets, seed=0, steps=1)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        extractor.extract(slices[:, 0])


def test_torchscript_extractor_loads_from_a_local_path(tmp_path, training_set) -> None:
    slices, _ = training_set
    torch.manual_seed(0)
    encoder = SliceEncoder(feature_dim=12).eval()
    path = tmp_path / "extractor.pt"
    torch.jit.script(encoder).save(str(path))
    extractor = load_torchscript_extractor(path)
    with torch.no_grad():
        expected = encoder(torch.from_numpy(slices)).double().numpy()
    np.testing.assert_allclose(extractor.extract(slices), expected, rtol=1e-5, atol=1e-6)
    assert "extractor.pt" in extractor.describe()


def test_torchscript_extractor_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(MissingFileError, match="absent.pt"):
        load_torchscript_extractor(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torchscript archive")
    with pytest.raises(UnreadableFileError, match="garbage.pt"):
        load_torchscript_extractor(garbage)


def test_training_from_the_store_slice_by_slice_equals_training_on_all_slices_in_memory(tmp_path) -> None:
    store = write_blob_store(tmp_path / "store.zarr", {"a": "train", "b": "train", "c": "train"})
    cases = [read_case(store, case) for case in ("a", "b", "c")]
    slices = volume_slices([image for image, _ in cases])
    targets = np.concatenate([slice_targets(label, num_classes=2) for _, label in cases])
    in_memory = train_feature_extractor(slices, targets, seed=2, steps=4)
    streamed = train_feature_extractor_on(StoredVolumes(store, ("a", "b", "c")).slices(), 2, seed=2, steps=4)
    np.testing.assert_array_equal(streamed.extract(slices), in_memory.extract(slices))
    assert f"{len(slices)} real" in streamed.describe()
