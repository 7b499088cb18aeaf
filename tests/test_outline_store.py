"""The anatomy outline in the store: ingest writes it beside the label and records it; older cases are refused
when read and reprocessed when ingested again. Arrays are (Z, H, W)."""

from __future__ import annotations

import numpy as np
import pytest

from gem3d.anatomy import OUTLINE_METHOD, anatomy_outline
from gem3d.config import DataConfig
from gem3d.errors import StoreError
from gem3d.ingest import process_case
from gem3d.io.layouts import discover_dataset
from gem3d.io.phantoms import write_phantom_dataset
from gem3d.store import case_attributes, init_store, open_case_outline, publish_case, read_case, stage_case

CONFIG = DataConfig(window_length=4, in_plane_size=32)
DATA_HASH = "hash0"


@pytest.fixture
def dataset(tmp_path):
    return discover_dataset(write_phantom_dataset(tmp_path / "brains", "brain", 2, shape=(32, 32, 16)))


@pytest.fixture
def store(tmp_path):
    return init_store(tmp_path / "store.zarr", {})


def _ingest(dataset, store, case_index=0):
    outcome = process_case(dataset.cases[case_index], dataset, CONFIG, store, DATA_HASH)
    if outcome.status == "staged":
        publish_case(store, outcome.case_id, outcome.staged)
    return outcome


def _make_old(store, case_id):
    """Rewrite a published case as a gem3d without outlines wrote it: no outline array, no outline attribute."""
    image, label = read_case(store, case_id)
    attributes = {
        key: value for key, value in case_attributes(store, case_id).items() if key not in ("outline", "case_id")
    }
    publish_case(store, case_id, stage_case(store, case_id, image, label, attributes, outline=None))


def test_ingest_stores_the_outline_of_the_preprocessed_image(dataset, store):
    for index in range(len(dataset.cases)):
        outcome = _ingest(dataset, store, index)
        assert outcome.status == "staged"
        image, label = read_case(store, outcome.case_id)
        outline = open_case_outline(store, outcome.case_id)[:]
        assert outline.shape == image.shape == label.shape
        assert set(np.unique(outline).tolist()) <= {0, 1}
        np.testing.assert_array_equal(outline.astype(bool), anatomy_outline(image))
        assert outline.any() and not outline.all()


def test_ingest_records_the_outline_method_size_and_no_label_outside(dataset, store):
    for index in range(len(dataset.cases)):
        outcome = _ingest(dataset, store, index)
        outline = open_case_outline(store, outcome.case_id)[:]
        recorded = case_attributes(store, outcome.case_id)["outline"]
        assert recorded["method"] == OUTLINE_METHOD
        assert recorded["voxels"] == int(outline.sum())
        assert recorded["label_voxels_outside"] == 0
        occupied = np.flatnonzero(outline.any(axis=(1, 2)))  # (Z,) slices holding body
        assert (recorded["first_slice"], recorded["last_slice"]) == (occupied[0], occupied[-1])


def test_case_without_outline_is_refused_naming_the_case_and_the_command(dataset, store):
    outcome = _ingest(dataset, store)
    _make_old(store, outcome.case_id)
    with pytest.raises(StoreError, match=outcome.case_id) as caught:
        open_case_outline(store, outcome.case_id)
    assert outcome.case_id in caught.value.reason and "gem3d preprocess" in caught.value.reason


def test_unchanged_case_without_outline_is_reprocessed_and_then_skipped(dataset, store):
    outcome = _ingest(dataset, store)
    _make_old(store, outcome.case_id)
    again = _ingest(dataset, store)
    assert again.status == "staged"
    assert case_attributes(store, outcome.case_id)["outline"]["method"] == OUTLINE_METHOD
    image, _ = read_case(store, outcome.case_id)
    np.testing.assert_array_equal(open_case_outline(store, outcome.case_id)[:].astype(bool), anatomy_outline(image))
    assert _ingest(dataset, store).status == "skipped"


def test_case_with_an_older_outline_method_is_reprocessed(dataset, store):
    outcome = _ingest(dataset, store)
    image, label = read_case(store, outcome.case_id)
    attributes = case_attributes(store, outcome.case_id)
    attributes["outline"] = {**attributes["outline"], "method": "an-older-method"}
    outline = open_case_outline(store, outcome.case_id)[:]
    publish_case(store, outcome.case_id, stage_case(store, outcome.case_id, image, label, attributes, outline=outline))
    assert _ingest(dataset, store).status == "staged"
