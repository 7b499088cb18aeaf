"""Informed slices: chosen at the same relative position, fixed references, and generated ones."""

from __future__ import annotations

import numpy as np
import pytest

from gem3d.checkpoints import load_model
from gem3d.lineage import InformedSliceRef, sha256_array
from gem3d.models.autoencoder import PixelCodec
from gem3d.sampling.informed import (
    choose_informed_case,
    chosen_slice,
    fixed_slice,
    generate_slices,
    most_foreground_slice,
    parse_reference,
    pick_chosen,
    relative_slice,
)
from gem3d.store import case_attributes, read_case
from tests.synthesis import CONFIG, build_models, build_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("informed"))


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    models_dir = build_models(tmp_path_factory.mktemp("models"))
    module, meta = load_model(models_dir / "slicegen")
    return module, meta["sha256"]


@pytest.mark.parametrize(
    ("start", "target", "source", "expected"),
    [(0, 10, 20, 0), (5, 10, 20, 10), (3, 12, 8, 2), (9, 10, 10, 9), (9, 10, 5, 4), (19, 20, 4, 3)],
)
def test_relative_slice_keeps_the_relative_position(start, target, source, expected):
    assert relative_slice(start, target, source) == expected


def test_relative_slice_rejects_a_start_outside_the_volume():
    with pytest.raises(ValueError, match="outside"):
        relative_slice(10, 10, 20)


def test_informed_case_is_drawn_by_seed_and_is_not_the_mask_case_while_others_exist():
    pool = ["a", "b", "c", "d"]
    draws = [choose_informed_case(pool, seed, exclude="a") for seed in range(40)]
    assert draws == [choose_informed_case(pool, seed, exclude="a") for seed in range(40)]
    assert set(draws) == {"b", "c", "d"}
    assert choose_informed_case(["a"], 3, exclude="a") == "a"
    with pytest.raises(ValueError, match="empty"):
        choose_informed_case([], 0)


def test_chosen_slice_is_the_real_slice_at_the_same_relative_position(store):
    informed_case, index = pick_chosen(store, ["case_000", "case_002"], "case_001", 6, 12, seed=5)
    assert informed_case in {"case_000", "case_002"}
    image, _ = read_case(store, informed_case)
    assert index == relative_slice(6, 12, image.shape[0])
    informed = chosen_slice(store, informed_case, index)
    assert informed.image.shape == (1, 16, 16) and informed.image.dtype == np.float32
    np.testing.assert_array_equal(informed.image[0], image[index])
    reference = informed.reference()
    assert reference == InformedSliceRef(
        mode="chosen", case_id=informed_case, slice_index=index, sha256=sha256_array(informed.image)
    )
    attributes = case_attributes(store, informed_case)
    [source] = informed.source_files
    assert (source.path, source.sha256, source.role) == (
        attributes["source_files"]["image"],
        attributes["source_sha256"]["image"],
        "informed_source",
    )


def test_own_case_option_takes_the_case_itself(store):
    assert pick_chosen(store, ["case_000", "case_002"], "case_001", 4, 10, seed=1, own_case=True) == ("case_001", 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("case_001:7", ("case_001", 7)), ("case_001", ("case_001", None)), ("site:a:3", ("site:a", 3))],
)
def test_parse_reference(text, expected):
    assert parse_reference(text) == expected


@pytest.mark.parametrize("text", ["case_001:x", ":3", "case_001:-1", ""])
def test_parse_reference_rejects_malformed_text(text):
    with pytest.raises(ValueError):
        parse_reference(text)


def test_fixed_reference_without_a_slice_takes_the_slice_with_most_foreground(store):
    image, label = read_case(store, "case_002")
    counts = [(label[index] > 0).sum() for index in range(label.shape[0])]
    expected = int(np.argmax(counts))
    assert most_foreground_slice(label) == expected
    informed = fixed_slice(store, "case_002")
    assert informed.provenance["mode"] == "fixed" and informed.provenance["slice_index"] == expected
    np.testing.assert_array_equal(informed.image[0], image[expected])
    assert fixed_slice(store, "case_002", 3).provenance["slice_index"] == 3
    with pytest.raises(ValueError, match="outside"):
        fixed_slice(store, "case_002", 99)


def test_generated_slices_are_seeded_batch_invariant_and_recorded(generator):
    module, digest = generator
    options = {
        "size": 16,
        "diffusion_config": CONFIG.diffusion,
        "sampling_config": CONFIG.sampling,
        "generator_sha256": digest,
    }
    together = generate_slices(module, PixelCodec(), [0.2, 0.7], [11, 12], slice_indices=[2, 7], **options)
    alone = generate_slices(module, PixelCodec(), [0.7], [12], slice_indices=[7], **options)
    other_seed = generate_slices(module, PixelCodec(), [0.7], [13], **options)
    np.testing.assert_allclose(together[1].image, alone[0].image, atol=1e-5)
    assert np.abs(together[1].image - other_seed[0].image).max() > 1e-3
    for informed in together:
        assert informed.image.shape == (1, 16, 16) and informed.image.dtype == np.float32
        assert informed.image.min() >= -1 and informed.image.max() <= 1
    reference = together[0].reference()
    assert reference.mode == "generated" and reference.generator_checkpoint_sha256 == digest
    assert (reference.seed, reference.slice_index, reference.sha256) == (11, 2, sha256_array(together[0].image))
