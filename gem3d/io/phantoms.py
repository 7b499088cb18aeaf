"""Built-in synthetic datasets ("phantoms"): BraTS-like FLAIR brains and AbdomenCT-1K-like CT abdomens.

The pipeline uses them when no dataset is given. Volumes are generated in RAS voxel order: axis 0 runs
towards the patient's Right, axis 1 towards Anterior, axis 2 towards Superior (Z = axial slices). On
disk they are stored the way DICOM-derived NIfTI often is, in LPS-like voxel order: axes 0 and 1 are
flipped and the affine gets negative x and y direction columns and a non-zero origin, so that the
world position of every voxel is unchanged and `nib.as_closest_canonical` gives back the RAS array.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from scipy import ndimage

Shape3D = tuple[int, int, int]

BRAIN_SPACING_MM = (2.0, 2.0, 3.0)
ABDOMEN_SPACING_MM = (0.8, 0.8, 2.5)
MIN_SHAPE = (32, 32, 16)
HU_RANGE = (-1024, 3071)

BRAIN_LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumor"}
ABDOMEN_LABELS = {0: "background", 1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"}


def case_generator(seed: int, case_index: int) -> np.random.Generator:
    """The random generator of one phantom case, derived from (seed, case_index) alone."""
    return np.random.default_rng(np.random.SeedSequence([seed, case_index]))


def _checked_shape(shape: tuple[int, int, int]) -> Shape3D:
    shape = tuple(int(size) for size in shape)
    if len(shape) != 3 or any(size < low for size, low in zip(shape, MIN_SHAPE, strict=True)):
        raise ValueError(f"phantom shape must be 3D and at least {MIN_SHAPE}, got {shape}")
    return shape


def _smooth_noise(rng: np.random.Generator, shape: Shape3D, cells: Shape3D) -> np.ndarray:
    """A zero-mean, unit-variance random field, smooth over about `shape / cells` voxels (separable blur)."""
    coarse = rng.standard_normal(tuple(count + 2 for count in cells), dtype=np.float32)
    blur_x, blur_y, blur_z = (_blur_matrix(size, count) for size, count in zip(shape, cells, strict=True))
    partial = np.einsum("ia,jb,abc->ijc", blur_x, blur_y, coarse, optimize=True)  # (a, b, c) -> (X, Y, c)
    field = (partial.reshape(-1, partial.shape[-1]) @ blur_z.T).reshape(shape)  # (X*Y, c) -> (X, Y, Z)
    sample = field[::3, ::3, ::3]  # statistics from a subsample are enough
    return (field - sample.mean()) / sample.std()


def _blur_matrix(size: int, count: int) -> np.ndarray:
    """Gaussian weights (size, count + 2) from coarse nodes to voxel centres; rows sum to one."""
    position = (np.arange(size) + 0.5) / size * count + 0.5  # voxel centres in coarse-node units
    kernel = np.exp(-0.5 * ((position[:, None] - np.arange(count + 2)[None, :]) / 0.7) ** 2)
    return (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)


def _open_grid(shape: Shape3D, spacing: np.ndarray, centre: np.ndarray) -> list[np.ndarray]:
    """Per-axis coordinates in mm from `centre` (voxels), shaped (X,1,1), (1,Y,1), (1,1,Z) for broadcasting."""
    return [
        ((np.arange(size) - middle) * step).astype(np.float32).reshape([-1 if axis == a else 1 for a in range(3)])
        for axis, (size, middle, step) in enumerate(zip(shape, centre, spacing, strict=True))
    ]


def _bias_field(rng: np.random.Generator, shape: Shape3D, strength: float = 1.0) -> np.ndarray:
    """A smooth multiplicative MRI bias field: exp of a random separable quadratic, about +-20 % at strength 1."""
    bias = np.ones(shape, dtype=np.float32)
    for axis, size in enumerate(shape):
        u = np.linspace(-1.0, 1.0, size, dtype=np.float32)
        profile = np.exp(strength * (rng.uniform(-0.12, 0.12) * u + rng.uniform(-0.08, 0.08) * u**2))
        bias *= profile.reshape([-1 if a == axis else 1 for a in range(3)])
    return bias


@dataclass(frozen=True)
class _Scanner:
    """How one "scanner" renders the same anatomy: bias field strength, noise, contrast curve, texture."""

    bias_strength: float
    noise: tuple[float, float]  # relative noise sigma range (MRI) or HU range (CT)
    gamma: float  # MRI contrast curve exponent applied to the tissue signal
    texture: float  # multiplies the tissue texture amplitude


# A case is drawn on one of these, so a dataset mixes appearances the way multi-centre data does.
_MRI_SCANNERS = (
    _Scanner(bias_strength=0.5, noise=(0.015, 0.03), gamma=1.0, texture=1.0),
    _Scanner(bias_strength=1.0, noise=(0.03, 0.05), gamma=0.75, texture=1.5),
    _Scanner(bias_strength=1.6, noise=(0.05, 0.08), gamma=1.35, texture=2.0),
)
_CT_SCANNERS = (
    _Scanner(bias_strength=0.0, noise=(6.0, 12.0), gamma=1.0, texture=1.0),
    _Scanner(bias_strength=5.0, noise=(12.0, 22.0), gamma=1.0, texture=1.6),
    _Scanner(bias_strength=10.0, noise=(20.0, 32.0), gamma=1.0, texture=2.2),
)


@dataclass(frozen=True)
class _ContrastPhase:
    """Hounsfield ranges of the enhancing tissues in one CT contrast phase (multi-phase data such as
    AbdomenCT-1K mixes them): the phase sets most of how a case looks inside the soft-tissue window."""

    liver: tuple[float, float]
    spleen: tuple[float, float]
    kidney_cortex: tuple[float, float]
    medulla_drop: tuple[float, float]  # cortex minus medulla
    pancreas: tuple[float, float]
    blood: tuple[float, float]


_CONTRAST_PHASES = (
    _ContrastPhase(  # unenhanced
        liver=(50, 65), spleen=(40, 50), kidney_cortex=(28, 40), medulla_drop=(0, 5), pancreas=(35, 45), blood=(35, 50)
    ),
    _ContrastPhase(  # late arterial
        liver=(60, 80),
        spleen=(90, 130),
        kidney_cortex=(170, 240),
        medulla_drop=(80, 130),
        pancreas=(95, 130),
        blood=(220, 330),
    ),
    _ContrastPhase(  # portal venous
        liver=(100, 130),
        spleen=(105, 130),
        kidney_cortex=(150, 200),
        medulla_drop=(20, 60),
        pancreas=(80, 110),
        blood=(140, 190),
    ),
)

# Brain tissue codes, indexes into per-subject FLAIR levels.
_B_BACKGROUND, _B_SKULL, _B_CSF, _B_WHITE, _B_GREY, _B_OEDEMA, _B_NECROTIC, _B_ENHANCING = range(8)


def make_brain_phantom(
    rng: np.random.Generator, shape: tuple[int, int, int] = (96, 96, 48)
) -> tuple[np.ndarray, np.ndarray]:
    """A BraTS-like FLAIR volume (float32, arbitrary positive scale) and tumour labels (uint8), RAS order.

    Labels follow BraTS: 1 oedema (hyperintense, the largest), 2 non-enhancing core, 3 enhancing tumour
    (a shell around 2, inside 1); 0 elsewhere. Head shape, tumour, contrasts and scale vary with `rng`.
    """
    shape = _checked_shape(shape)
    spacing = np.asarray(BRAIN_SPACING_MM)
    half_extent = np.asarray(shape) * spacing / 2
    centre = (np.asarray(shape) - 1) / 2 + rng.uniform(-0.06, 0.06, 3) * np.asarray(shape)
    x, y, z = _open_grid(shape, spacing, centre)
    yaw = rng.uniform(-0.15, 0.15)
    across = math.cos(yaw) * x + math.sin(yaw) * y  # (X, Y, 1) head frame, rotated in-plane
    along = -math.sin(yaw) * x + math.cos(yaw) * y

    semi = (half_extent * rng.uniform((0.64, 0.72, 0.74), (0.86, 0.92, 0.94))).tolist()
    head_radius = np.sqrt((across / semi[0]) ** 2 + (along / semi[1]) ** 2 + (z / semi[2]) ** 2)
    head_radius = head_radius * (1 + 0.03 * _smooth_noise(rng, shape, (4, 4, 3)))  # (X, Y, Z)
    head = head_radius < 1.0
    brain = head_radius < 0.86
    skull = head & (head_radius >= 0.9)
    grey = brain & (head_radius > 0.72 + 0.05 * _smooth_noise(rng, shape, (10, 10, 5)))

    lateral = semi[0] * rng.uniform(0.09, 0.14)
    ventricle_semi = (np.asarray(semi) * rng.uniform((0.05, 0.20, 0.15), (0.09, 0.30, 0.22))).tolist()
    ventricle_centre = (np.asarray(semi) * rng.uniform((-0.02, -0.10, 0.0), (0.02, 0.05, 0.15))).tolist()
    ventricles = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        ventricles |= (
            ((across - ventricle_centre[0] - side * lateral) / ventricle_semi[0]) ** 2
            + ((along - ventricle_centre[1]) / ventricle_semi[1]) ** 2
            + ((z - ventricle_centre[2]) / ventricle_semi[2]) ** 2
        ) < 1
    csf = (brain & ventricles) | (head & ~brain & ~skull)

    deep_brain = head_radius < 0.78  # a margin of more than one voxel inside `brain`
    label = _brain_tumour(rng, shape, brain, deep_brain, (across, along, z), [half * 0.86 for half in semi])

    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[skull] = _B_SKULL
    tissue[brain] = _B_WHITE
    tissue[grey] = _B_GREY
    tissue[csf] = _B_CSF
    tissue[label == 1] = _B_OEDEMA
    tissue[label == 2] = _B_NECROTIC
    tissue[label == 3] = _B_ENHANCING
    scanner = _MRI_SCANNERS[int(rng.integers(len(_MRI_SCANNERS)))]
    # FLAIR protocols differ between centres: how well CSF is nulled, grey/white contrast, scalp fat signal,
    # and how bright lesions come out relative to white matter (which, after percentile normalisation,
    # shifts the whole head)
    levels = np.array(
        [0.0, rng.uniform(0.25, 1.3), rng.uniform(0.05, 0.6), 1.0, rng.uniform(1.0, 1.5)]
        + [rng.uniform(1.25, 2.8), rng.uniform(0.3, 1.2), rng.uniform(0.9, 2.0)],
        dtype=np.float32,
    )
    texture = 1 + scanner.texture * rng.uniform(0.03, 0.08) * _smooth_noise(rng, shape, (16, 16, 8))
    # lesion texture: oedema and tumour vary inside, by a per-case amount, on a finer scale than the tissue
    lesion_texture = 1 + rng.uniform(0.05, 0.25) * _smooth_noise(rng, shape, (24, 24, 12))
    texture = np.where(label > 0, texture * lesion_texture, texture)
    signal = ndimage.gaussian_filter((levels[tissue] * texture) ** scanner.gamma, sigma=0.6)
    signal *= _bias_field(rng, shape, scanner.bias_strength)
    sigma = rng.uniform(*scanner.noise)
    real = signal + sigma * rng.standard_normal(shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(shape, dtype=np.float32)
    scale = math.exp(rng.uniform(math.log(100.0), math.log(3000.0)))
    image = (np.hypot(real, imaginary) * scale).astype(np.float32)  # Rician magnitude
    return image, label


def _brain_tumour(
    rng: np.random.Generator,
    shape: Shape3D,
    brain: np.ndarray,
    deep_brain: np.ndarray,
    frame: tuple[np.ndarray, np.ndarray, np.ndarray],
    brain_semi: list[float],
) -> np.ndarray:
    """BraTS labels for one irregular tumour in `brain`: nested noise-modulated blobs; dilations make 3 enclose 2
    and 1 enclose 3."""
    direction = rng.standard_normal(3)
    offset = (direction / np.linalg.norm(direction) * rng.uniform(0.1, 0.45) * np.asarray(brain_semi)).tolist()
    distance = np.sqrt(sum((axis - shift) ** 2 for axis, shift in zip(frame, offset, strict=True)))  # (X, Y, Z) mm
    radius = rng.uniform(0.45, 0.65) * min(brain_semi)
    oedema_shape = np.clip(1 + 0.3 * _smooth_noise(rng, shape, (8, 8, 5)), 0.6, 1.5)
    core_shape = np.clip(1 + 0.25 * _smooth_noise(rng, shape, (10, 10, 6)), 0.7, 1.4)
    core_fraction = rng.uniform(0.4, 0.55)
    necrotic_fraction = core_fraction * rng.uniform(0.45, 0.65)

    necrotic = distance < necrotic_fraction * radius * core_shape
    necrotic.flat[np.argmin(distance)] = True
    necrotic &= deep_brain
    core = (brain & (distance < core_fraction * radius * core_shape)) | ndimage.binary_dilation(necrotic)
    oedema = brain & ((distance < radius * oedema_shape) | ndimage.binary_dilation(core))
    label = np.zeros(shape, dtype=np.uint8)
    label[oedema] = 1
    label[core] = 3
    label[necrotic] = 2
    return label


# Abdomen tissue codes, indexes into per-subject HU levels; organs last so labels are a lookup.
(
    _A_AIR,
    _A_FAT,
    _A_MUSCLE,
    _A_BOWEL,
    _A_GAS,
    _A_BONE,
    _A_CORTEX_BONE,
    _A_BLOOD,
    _A_CSF,
    _A_LIVER,
    _A_KIDNEY,
    _A_MEDULLA,
    _A_SPLEEN,
    _A_PANCREAS,
) = range(14)
_LABEL_OF_TISSUE = np.array([0] * 9 + [1, 2, 2, 3, 4], dtype=np.uint8)
_TEXTURE_HU = np.array([0, 10, 8, 15, 30, 60, 80, 6, 3, 5, 6, 6, 5, 5], dtype=np.float32)
# (tissue, centre offset from the vertebral body (right, anterior), semi-axes), in body half-widths; painted in order.
_SPINE_AND_VESSELS = (
    (_A_MUSCLE, (0.13, -0.17), (0.09, 0.08)),  # paraspinal muscles
    (_A_MUSCLE, (-0.13, -0.17), (0.09, 0.08)),
    (_A_MUSCLE, (0.11, 0.04), (0.05, 0.05)),  # psoas
    (_A_MUSCLE, (-0.11, 0.04), (0.05, 0.05)),
    (_A_CORTEX_BONE, (0.0, 0.0), (0.12, 0.10)),  # vertebral body: cortex, then cancellous bone inside
    (_A_BONE, (0.0, 0.0), (0.10, 0.08)),
    (_A_CORTEX_BONE, (0.0, -0.22), (0.035, 0.05)),  # spinous process
    (_A_CSF, (0.0, -0.14), (0.045, 0.04)),  # spinal canal
    (_A_BLOOD, (-0.04, 0.17), (0.05, 0.05)),  # aorta, left of midline
    (_A_BLOOD, (0.08, 0.16), (0.06, 0.04)),  # inferior vena cava, right
)


def _ellipsoid_radius(coords: tuple[np.ndarray, ...], centre: tuple[float, ...], semi: tuple[float, ...]) -> np.ndarray:
    return np.sqrt(sum(((axis - middle) / half) ** 2 for axis, middle, half in zip(coords, centre, semi, strict=True)))


def make_abdomen_phantom(
    rng: np.random.Generator, shape: tuple[int, int, int] = (96, 96, 48)
) -> tuple[np.ndarray, np.ndarray]:
    """An AbdomenCT-1K-like CT volume (int16 HU) and organ labels (uint8: 1 liver, 2 kidneys, 3 spleen,
    4 pancreas), RAS order.

    RAS means axis 0 increases towards the patient's Right: the liver sits at high x, the spleen at low x;
    the spine is posterior (low y). Organs occupy the middle of Z, so slices at both ends carry no label.
    """
    shape = _checked_shape(shape)
    size_x, size_y, size_z = shape
    half_width = size_x / 2 * rng.uniform(0.78, 0.92)  # voxels; in-plane spacing is isotropic
    depth = rng.uniform(0.62, 0.76)  # antero-posterior half-depth / left-right half-width
    centre_x = (size_x - 1) / 2 + rng.uniform(-0.04, 0.04) * size_x
    centre_y = (size_y - 1) / 2 + rng.uniform(-0.06, 0.0) * size_y
    right = ((np.arange(size_x) - centre_x) / half_width).astype(np.float32).reshape(-1, 1, 1)  # towards Right
    anterior = ((np.arange(size_y) - centre_y) / half_width).astype(np.float32).reshape(1, -1, 1)  # towards Anterior
    height = (np.arange(size_z) / (size_z - 1)).astype(np.float32).reshape(1, 1, -1)  # towards Superior, 0..1
    girth = 1 + 0.04 * np.sin(2 * np.pi * (height * rng.uniform(0.5, 1.0) + rng.uniform()))
    body_radius = np.sqrt(right**2 + (anterior / depth) ** 2) / girth  # (X, Y, Z)
    fat_thickness = rng.uniform(0.05, 0.15)
    body = body_radius < 1
    interior = body_radius < 1 - fat_thickness - 0.04

    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[body] = _A_FAT
    tissue[body & ~interior & (body_radius < 1 - fat_thickness)] = _A_MUSCLE
    bowel = interior & (_smooth_noise(rng, shape, (8, 8, 6)) > rng.uniform(-0.4, 0.3))
    tissue[bowel] = _A_BOWEL
    tissue[bowel & (_smooth_noise(rng, shape, (12, 12, 8)) > 1.8)] = _A_GAS

    organ_shape = np.clip(1 + 0.12 * _smooth_noise(rng, shape, (10, 10, 6)), 0.8, 1.2)
    plane = (right, anterior)
    volume = (right, anterior, height)

    def organ(centre: tuple[float, float, float], semi: tuple[float, float, float]) -> np.ndarray:
        jitter = rng.uniform(-0.03, 0.03, 3).tolist()
        scale = rng.uniform(0.85, 1.15)
        centre = (centre[0] + jitter[0], centre[1] * depth + jitter[1], centre[2] + jitter[2])
        semi = (semi[0] * scale, semi[1] * depth * scale, semi[2] * scale)
        return _ellipsoid_radius(volume, centre, semi) / organ_shape

    liver_radius = organ((0.42, 0.05, 0.64), (0.40, 0.62, 0.20))
    liver_radius = liver_radius + 0.25 * np.clip(0.42 - right, 0, None)  # thinner left lobe
    tissue[interior & (liver_radius < 1)] = _A_LIVER
    tissue[interior & (organ((-0.52, -0.30, 0.62), (0.14, 0.30, 0.13)) < 1)] = _A_SPLEEN
    for side, kidney_height in ((1.0, 0.40), (-1.0, 0.45)):  # the right kidney sits lower
        kidney_radius = organ((side * 0.28, -0.42, kidney_height), (0.09, 0.19, 0.13))
        tissue[interior & (kidney_radius < 1)] = _A_KIDNEY
        tissue[interior & (kidney_radius < 0.55)] = _A_MEDULLA
    angle = rng.uniform(0.15, 0.4)  # tail towards the spleen: left and posterior
    along = math.cos(angle) * right + math.sin(angle) * anterior
    across = -math.sin(angle) * right + math.cos(angle) * anterior
    pancreas_radius = _ellipsoid_radius((along, across, height), (0.0, -0.05 * depth, 0.52), (0.28, 0.07, 0.09))
    tissue[interior & (pancreas_radius / organ_shape < 1)] = _A_PANCREAS

    spine = -0.5 * depth  # vertebral body centre, in half-widths towards Anterior
    disc = (np.arange(size_z) * ABDOMEN_SPACING_MM[2] % rng.uniform(28.0, 34.0) < 7.0).reshape(1, 1, -1)
    for code, (offset_right, offset_anterior), semi in _SPINE_AND_VESSELS:
        tissue[body & (_ellipsoid_radius(plane, (offset_right, spine + offset_anterior), semi) < 1)] = code
    tissue[body & disc & (_ellipsoid_radius(plane, (0.0, spine), (0.12, 0.10)) < 1)] = _A_MUSCLE

    phase = _CONTRAST_PHASES[int(rng.integers(len(_CONTRAST_PHASES)))]
    kidney_hu = rng.uniform(*phase.kidney_cortex)
    levels = np.array(
        [-1000, rng.uniform(-115, -85), rng.uniform(35, 55), rng.uniform(10, 40), rng.uniform(-980, -900)]
        + [rng.uniform(300, 450), rng.uniform(700, 1100), rng.uniform(*phase.blood), rng.uniform(5, 20)]
        + [rng.uniform(*phase.liver), kidney_hu, kidney_hu - rng.uniform(*phase.medulla_drop)]
        + [rng.uniform(*phase.spleen), rng.uniform(*phase.pancreas)],
        dtype=np.float32,
    )
    scanner = _CT_SCANNERS[int(rng.integers(len(_CT_SCANNERS)))]
    texture = scanner.texture * _smooth_noise(rng, shape, (16, 16, 8))
    # organ texture on a finer scale, by a per-case amount (fatty or heterogeneous parenchyma)
    organ_texture = rng.uniform(3.0, 10.0) * _smooth_noise(rng, shape, (24, 24, 12)) * (_LABEL_OF_TISSUE[tissue] > 0)
    hounsfield = levels[tissue] + _TEXTURE_HU[tissue] * texture + organ_texture
    hounsfield = ndimage.gaussian_filter(hounsfield, sigma=(0.6, 0.6, 0.3))
    hounsfield += scanner.bias_strength * _smooth_noise(rng, shape, (2, 2, 2)) * (tissue != _A_AIR)  # beam hardening
    hounsfield += rng.uniform(*scanner.noise) * rng.standard_normal(shape, dtype=np.float32)
    image = np.rint(np.clip(hounsfield, *HU_RANGE)).astype(np.int16)
    return image, _LABEL_OF_TISSUE[tissue]


@dataclass(frozen=True)
class _PhantomKind:
    make: Callable[[np.random.Generator, Shape3D], tuple[np.ndarray, np.ndarray]]
    spacing: tuple[float, float, float]
    centre_mm: tuple[float, float, float]  # RAS world position of the volume centre
    modality: str
    labels: dict[int, str]
    description: str


_KINDS = {
    "brain": _PhantomKind(
        make_brain_phantom,
        BRAIN_SPACING_MM,
        (1.5, -18.0, 12.0),
        "FLAIR",
        BRAIN_LABELS,
        "Synthetic BraTS-like FLAIR MRI brains with tumour labels (gem3d phantom)",
    ),
    "abdomen": _PhantomKind(
        make_abdomen_phantom,
        ABDOMEN_SPACING_MM,
        (-3.0, -160.0, -420.0),
        "CT",
        ABDOMEN_LABELS,
        "Synthetic AbdomenCT-1K-like CT abdomens in Hounsfield units with organ labels (gem3d phantom)",
    ),
}


def ras_affine(
    spacing: tuple[float, float, float], shape: Shape3D, centre_mm: tuple[float, float, float]
) -> np.ndarray:
    """The affine of a RAS-ordered array with the given spacing whose centre voxel lies at `centre_mm`."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(centre_mm) - (np.asarray(shape) - 1) / 2 * np.asarray(spacing)
    return affine


def to_lps_storage(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip axes 0 and 1 of a RAS-ordered array and fold the flip into its affine: same world geometry."""
    size_x, size_y = array.shape[:2]
    flip = np.array([[-1, 0, 0, size_x - 1], [0, -1, 0, size_y - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    return np.ascontiguousarray(array[::-1, ::-1]), affine @ flip  # stored (i, j, k) = RAS (X-1-i, Y-1-j, k)


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save with qform and sform (code 1) and mm zooms, through a temporary sibling and a rename."""
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_zooms(tuple(float(zoom) for zoom in np.linalg.norm(affine[:3, :3], axis=0)))
    image.header.set_xyzt_units("mm")
    temporary = path.with_name(f".{path.name.removesuffix('.nii.gz')}.tmp{os.getpid()}.nii.gz")
    nib.save(image, temporary)
    os.replace(temporary, path)


def write_phantom_dataset(
    out: Path,
    kind: Literal["brain", "abdomen"],
    cases: int,
    seed: int = 0,
    shape: tuple[int, int, int] = (96, 96, 48),
) -> Path:
    """Write `cases` phantoms as a Medical Segmentation Decathlon dataset at `out` and return `out`.

    Case i is generated from `case_generator(seed, i)`. Refuses (FileExistsError) a non-empty `out`.
    """
    out = Path(out)
    if kind not in _KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {sorted(_KINDS)}")
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"refusing to write a phantom dataset into {out}: it exists and is not empty")
    spec = _KINDS[kind]
    shape = _checked_shape(shape)
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (out / folder).mkdir(parents=True, exist_ok=True)

    training = []
    affine = ras_affine(spec.spacing, shape, spec.centre_mm)
    for case_index in range(cases):
        case_id = f"{kind}_{case_index:03d}"
        image, label = spec.make(case_generator(seed, case_index), shape)
        for array, folder in ((image, "imagesTr"), (label, "labelsTr")):
            stored, stored_affine = to_lps_storage(array, affine)
            _save_nifti(stored, stored_affine, out / folder / f"{case_id}.nii.gz")
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})

    meta = {
        "name": f"gem3d-phantom-{kind}",
        "description": spec.description,
        "tensorImageSize": "3D",
        "modality": {"0": spec.modality},
        "labels": {str(value): name for value, name in spec.labels.items()},
        "numTraining": cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    temporary = out / f".dataset.json.tmp{os.getpid()}"
    temporary.write_text(json.dumps(meta, indent=2))
    os.replace(temporary, out / "dataset.json")
    return out
