"""Phantom datasets written to disk: MSD layout, determinism, label semantics, geometry and HU ranges."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from gem3d.anatomy import anatomy_outline
from gem3d.io.layouts import discover_dataset
from gem3d.io.phantoms import (
    ABDOMEN_SPACING_MM,
    BRAIN_SPACING_MM,
    MIN_SHAPE,
    case_generator,
    make_abdomen_phantom,
    make_brain_phantom,
    write_phantom_dataset,
)

SHAPE = (96, 96, 48)
SMALL = (48, 48, 24)
CASES = 3
SEED = 7


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    kinds = ("brain", "abdomen")
    return {kind: write_phantom_dataset(root / kind, kind, CASES, seed=SEED, shape=SHAPE) for kind in kinds}


def _load(root: Path, case_id: str) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    return nib.load(root / "imagesTr" / f"{case_id}.nii.gz"), nib.load(root / "labelsTr" / f"{case_id}.nii.gz")


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(mask).mean(axis=0))


@pytest.mark.parametrize(
    ("kind", "modality", "labels"),
    [
        ("brain", "FLAIR", ["background", "edema", "non-enhancing tumor", "enhancing tumor"]),
        ("abdomen", "CT", ["background", "liver", "kidney", "spleen", "pancreas"]),
    ],
)
def test_writes_decathlon_layout_and_dataset_json(datasets, kind, modality, labels):
    root = datasets[kind]
    meta = json.loads((root / "dataset.json").read_text())
    ids = [f"{kind}_{index:03d}" for index in range(CASES)]
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": modality}
    assert meta["labels"] == {str(value): name for value, name in enumerate(labels)}
    assert (meta["numTraining"], meta["numTest"], meta["test"]) == (CASES, 0, [])
    assert meta["name"] and meta["description"]
    assert meta["training"] == [
        {"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"} for case_id in ids
    ]
    assert sorted(path.name for path in (root / "imagesTr").iterdir()) == [f"{i}.nii.gz" for i in ids]
    assert sorted(path.name for path in (root / "labelsTr").iterdir()) == [f"{i}.nii.gz" for i in ids]
    assert not [path for path in root.rglob(".*")], "temporary files left behind"

    info = discover_dataset(root)
    assert (info.layout, info.modality, len(info.cases), info.problems) == (
        "msd",
        "CT" if kind == "abdomen" else "MRI",
        CASES,
        [],
    )


@pytest.mark.parametrize("kind", ["brain", "abdomen"])
def test_same_seed_gives_identical_arrays_and_another_seed_differs(tmp_path, kind):
    first, again, other = (
        write_phantom_dataset(tmp_path / name, kind, 2, seed=seed, shape=SMALL)
        for name, seed in (("first", 3), ("again", 3), ("other", 4))
    )
    for case_id in (f"{kind}_000", f"{kind}_001"):
        arrays = [[np.asarray(img.dataobj) for img in _load(root, case_id)] for root in (first, again, other)]
        assert all(a.tobytes() == b.tobytes() for a, b in zip(arrays[0], arrays[1], strict=True))
        assert all(a.tobytes() != b.tobytes() for a, b in zip(arrays[0], arrays[2], strict=True))
    image_0, image_1 = (np.asarray(_load(first, f"{kind}_00{i}")[0].dataobj) for i in (0, 1))
    assert image_0.tobytes() != image_1.tobytes(), "cases of one dataset must differ"


@pytest.mark.parametrize(("kind", "dtype"), [("brain", np.float32), ("abdomen", np.int16)])
def test_stored_lps_with_real_affine_and_canonical_gives_generated_ras_arrays(datasets, kind, dtype):
    spacing = BRAIN_SPACING_MM if kind == "brain" else ABDOMEN_SPACING_MM
    make = make_brain_phantom if kind == "brain" else make_abdomen_phantom
    for index in range(CASES):
        image, label = _load(datasets[kind], f"{kind}_{index:03d}")
        assert image.get_data_dtype() == dtype and label.get_data_dtype() == np.uint8
        assert np.allclose(np.diag(image.affine)[:3], [-spacing[0], -spacing[1], spacing[2]])
        assert np.all(np.abs(image.affine[:3, 3]) > 1.0), "origin must be non-zero"
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
        assert np.allclose(image.header.get_zooms(), spacing)
        assert np.allclose(image.header.get_qform(), image.affine) and np.array_equal(label.affine, image.affine)

        expected_image, expected_label = make(case_generator(SEED, index), SHAPE)
        canonical_image, canonical_label = nib.as_closest_canonical(image), nib.as_closest_canonical(label)
        assert nib.aff2axcodes(canonical_image.affine) == ("R", "A", "S")
        assert np.array_equal(np.asarray(canonical_image.dataobj), expected_image)
        assert np.array_equal(np.asarray(canonical_label.dataobj), expected_label)
        corner = np.array(SHAPE) - 1
        assert np.allclose(  # one voxel, the same world point in stored and canonical order
            nib.affines.apply_affine(image.affine, [0, 0, 0]),
            nib.affines.apply_affine(canonical_image.affine, [corner[0], corner[1], 0]),
        )


@pytest.mark.parametrize(("kind", "present"), [("brain", {1, 2, 3}), ("abdomen", {1, 2, 3, 4})])
def test_every_case_has_every_declared_label_and_nothing_else(datasets, kind, present):
    declared = {int(value) for value in json.loads((datasets[kind] / "dataset.json").read_text())["labels"]}
    for index in range(CASES):
        label = np.asarray(_load(datasets[kind], f"{kind}_{index:03d}")[1].dataobj)
        values = set(np.unique(label).tolist())
        assert values <= declared
        assert values == present | {0}


def test_brain_tumour_is_nested_inside_the_head_and_hyperintense(datasets):
    for index in range(CASES):
        image_nii, label_nii = _load(datasets["brain"], f"brain_{index:03d}")
        image, label = np.asarray(image_nii.dataobj), np.asarray(label_nii.dataobj)
        head = anatomy_outline(image.astype(np.float32))  # threshold, largest component, holes filled
        assert np.all(head[ndimage.binary_dilation(label > 0, iterations=2)]), "tumour must sit inside the head"
        counts = np.bincount(label.ravel(), minlength=4)
        assert counts[1] > counts[2] and counts[1] > counts[3], "oedema is the largest region"
        assert set(np.unique(label[ndimage.binary_dilation(label == 2)])) <= {2, 3}, "enhancing shell around 2"
        assert set(np.unique(label[ndimage.binary_dilation(label == 3)])) <= {1, 2, 3}, "enhancing inside oedema"
        assert image[label == 1].mean() > 1.2 * np.median(image[head & (label == 0)]), "oedema is bright on FLAIR"
        tumour_slices = (label > 0).any(axis=(0, 1))
        assert 0 < tumour_slices.sum() < label.shape[2]
        corner = image[:8, :8, :]
        assert corner.min() >= 0 and corner.mean() < 0.1 * image[head].mean(), "Rician background outside"


def test_abdomen_hounsfield_units_and_anatomy(datasets):
    scales = []
    for index in range(CASES):
        image_nii, label_nii = _load(datasets["abdomen"], f"abdomen_{index:03d}")
        image, label = np.asarray(image_nii.dataobj), np.asarray(label_nii.dataobj)
        assert image.min() >= -1024 and image.max() <= 3071
        assert abs(np.median(image[:5, :5, :]) + 1000) < 60, "air outside the body"
        assert np.count_nonzero((image > -150) & (image < -50)) > 0.03 * image.size, "fat present"
        assert image.max() > 400, "bone present"
        body = ndimage.binary_fill_holes(ndimage.gaussian_filter(image.astype(np.float32), 1.0) > -500)
        assert np.all(body[label > 0]) and np.all(image[label > 0] > -300), "organs sit inside the body"

        means = {value: float(image[label == value].mean()) for value in (1, 2, 3, 4)}
        # soft-tissue HU over the contrast phases (unenhanced ~50, arterial ~70, portal venous ~115 for the liver);
        # the pancreas is thin: at small sizes its mean takes in enhanced vessels and kidney
        assert 40 <= means[1] <= 140 and 30 <= means[3] <= 140 and 0 <= means[4] <= 150
        enhanced = means[2] > means[1] + 20  # enhancing kidney cortex outshines the liver
        assert enhanced or means[1] > means[3], "unenhanced: the liver is denser than the spleen"
        affine = image_nii.affine  # world RAS: +x is the patient's right, +y anterior
        liver, spleen = _world_centroid(label == 1, affine), _world_centroid(label == 3, affine)
        spine = _world_centroid(image > 300, affine)
        assert spleen[0] < spine[0] < liver[0], "liver on the patient's right, spleen on the left"
        kidneys, count = ndimage.label(label == 2)
        assert count == 2
        kidney_x = sorted(_world_centroid(kidneys == part, affine)[0] for part in (1, 2))
        assert kidney_x[0] < spine[0] < kidney_x[1] and spine[1] < liver[1], "spine posterior, between kidneys"
        scales.append(np.count_nonzero(label == 1))
    assert len(set(scales)) == CASES, "organ sizes vary per subject"


def _label_means(image: np.ndarray, label: np.ndarray, values: tuple[int, ...]) -> list[float]:
    return [float(image[label == value].mean()) for value in values]


def test_cases_differ_in_appearance_not_only_in_anatomy():
    """Multi-centre look: CT contrast phase sets the liver and kidney HU; FLAIR protocol sets lesion brightness
    relative to the rest of the head. Both must vary across cases far beyond the noise of one case."""
    abdomen = [make_abdomen_phantom(case_generator(SEED, index), SMALL) for index in range(12)]
    liver, kidney = zip(*(_label_means(image, label, (1, 2)) for image, label in abdomen), strict=True)
    assert max(liver) - min(liver) > 40, f"liver HU hardly varies: {sorted(liver)}"
    assert max(kidney) - min(kidney) > 100, f"kidney HU hardly varies: {sorted(kidney)}"
    contrasts = []
    for index in range(12):
        image, label = make_brain_phantom(case_generator(SEED, index), SMALL)
        head = anatomy_outline(image)
        contrasts.append(np.median(image[head & (label == 0)]) / np.median(image[label == 1]))
    assert max(contrasts) > 1.8 * min(contrasts), f"head-to-oedema contrast hardly varies: {sorted(contrasts)}"


@pytest.mark.parametrize("shape", [MIN_SHAPE, SMALL])
@pytest.mark.parametrize("seed", range(4))
def test_abdomen_has_every_organ_and_empty_label_slices_at_both_ends_but_body_in_every_slice(seed, shape):
    image, label = make_abdomen_phantom(case_generator(seed, 0), shape)
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3, 4}
    labelled = (label > 0).any(axis=(0, 1))
    assert not labelled[0] and not labelled[-1]
    assert ((image > -500).sum(axis=(0, 1)) > 0.2 * shape[0] * shape[1]).all()


@pytest.mark.parametrize("seed", range(8))
def test_brain_labels_present_and_nested_at_the_smallest_shape(seed):
    image, label = make_brain_phantom(case_generator(seed, 0), MIN_SHAPE)
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.min() >= 0
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
    assert set(np.unique(label[ndimage.binary_dilation(label == 2)])) <= {2, 3}


def test_refuses_a_non_empty_output_folder_and_leaves_it_alone(tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "dataset.json").write_text('{"name": "someone else"}')
    with pytest.raises(FileExistsError, match="existing"):
        write_phantom_dataset(out, "brain", 1, shape=SMALL)
    assert (out / "dataset.json").read_text() == '{"name": "someone else"}'
    assert sorted(path.name for path in out.iterdir()) == ["dataset.json"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_phantom_dataset(empty, "abdomen", 1, shape=SMALL) == empty
    assert (empty / "dataset.json").exists()


def test_rejects_unknown_kind_bad_counts_and_tiny_shapes(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        write_phantom_dataset(tmp_path / "a", "liver", 1)
    with pytest.raises(ValueError, match="cases"):
        write_phantom_dataset(tmp_path / "b", "brain", 0)
    with pytest.raises(ValueError, match="shape"):
        make_brain_phantom(case_generator(0, 0), (16, 16, 8))
