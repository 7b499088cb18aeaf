"""Per-case ingest: every kind of bad input becomes a named failure; good cases are staged, then skipped."""

import numpy as np
import pytest

from gem3d.config import DataConfig
from gem3d.ingest import process_case
from gem3d.io.layouts import discover_dataset
from gem3d.store import init_store, publish_case, read_window
from tests.builders import lps_affine, make_volume, save, write_msd_dataset

CONFIG = DataConfig(window_length=4, in_plane_size=16)


@pytest.fixture
def dataset(tmp_path):
    return write_msd_dataset(tmp_path / "msd", cases=2)


@pytest.fixture
def store(tmp_path):
    return init_store(tmp_path / "store.zarr", {})


def _outcome(dataset, store, case_index=0):
    info = discover_dataset(dataset)
    return process_case(info.cases[case_index], info, CONFIG, store, "hash0")


def _corrupt(dataset, name, image=None, label=None, affine=None):
    rng = np.random.default_rng(9)
    base_image, base_label = make_volume(rng)
    affine = lps_affine() if affine is None else affine
    save(base_image if image is None else image, affine, dataset / "imagesTr" / f"{name}.nii.gz")
    save(base_label if label is None else label, lps_affine(), dataset / "labelsTr" / f"{name}.nii.gz")


def test_good_case_is_staged_and_an_unchanged_rerun_skips_it(dataset, store):
    outcome = _outcome(dataset, store)
    assert outcome.status == "staged" and outcome.error is None
    publish_case(store, outcome.case_id, outcome.staged)
    image, label = read_window(store, "case_000", 1, 4)
    assert image.shape == label.shape == (4, 16, 16)
    again = _outcome(dataset, store)
    assert again.status == "skipped" and again.statistics == outcome.statistics


def test_changed_source_is_reprocessed(dataset, store):
    outcome = _outcome(dataset, store)
    publish_case(store, outcome.case_id, outcome.staged)
    _corrupt(dataset, "case_000")
    assert _outcome(dataset, store).status == "staged"


@pytest.mark.parametrize(
    ("mutation", "kind", "words"),
    [
        ("truncate", "unreadable", "cannot read"),
        ("shape", "geometry-mismatch", "differs from image shape"),
        ("affine", "geometry-mismatch", "affine differs"),
        ("nan", "non-finite", "NaN or infinite"),
        ("labels", "invalid-labels", "not declared"),
        ("four_d", "wrong-dimensions", "expected a 3D image"),
        ("constant", "empty-image", "constant"),
        ("thin", "too-few-slices", "fewer than one window"),
    ],
)
def test_bad_input_is_named_with_file_and_reason(dataset, store, mutation, kind, words):
    rng = np.random.default_rng(3)
    image, label = make_volume(rng)
    image_path = dataset / "imagesTr" / "case_000.nii.gz"
    before = {p: p.read_bytes() for p in (dataset / "labelsTr").iterdir()}
    if mutation == "truncate":
        image_path.write_bytes(image_path.read_bytes()[:200])
    elif mutation == "shape":
        _corrupt(dataset, "case_000", image=image[:, :, :-1])
    elif mutation == "affine":
        shifted = lps_affine()
        shifted[0, 3] += 5
        _corrupt(dataset, "case_000", affine=shifted)
    elif mutation == "nan":
        image[3, 3, 3] = np.nan
        _corrupt(dataset, "case_000", image=image)
    elif mutation == "labels":
        label[label == 2] = 9
        _corrupt(dataset, "case_000", label=label)
    elif mutation == "four_d":
        _corrupt(dataset, "case_000", image=np.stack([image, image], axis=-1))
    elif mutation == "constant":
        _corrupt(dataset, "case_000", image=np.full_like(image, 7.0))
    elif mutation == "thin":
        _corrupt(dataset, "case_000", image=image[:, :, 5:8], label=label[:, :, 5:8])
    outcome = _outcome(dataset, store)
    assert outcome.status == "failed" and outcome.staged is None
    assert outcome.error["kind"] == kind
    assert words in outcome.error["reason"]
    assert "case_000" in outcome.error["path"]
    assert outcome.inventory["readable"] is False
    assert _outcome(dataset, store, case_index=1).status == "staged"
    assert {p: p.read_bytes() for p in (dataset / "labelsTr").iterdir()}.keys() == before.keys()
