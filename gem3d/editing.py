"""Composable, recorded mask edits: the `ma` augmentation of the paper and counterfactual edits.

Label volumes are uint8 arrays `(Z, H, W)`; W is the left-right axis. Every edit is a small frozen model
of its declared parameters; `apply_edits` samples the random parts and returns `AppliedEdit` records that
carry the concrete values, so `replay_edits` reproduces the mask without randomness. What the `ma` augmentation
may move or mirror depends on the dataset: see `EDIT_PROFILES` and `default_augmentation`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from scipy import ndimage

from gem3d.config import EditConfig
from gem3d.errors import InvalidEditError
from gem3d.lineage import sha256_array

LabelSet = tuple[Annotated[int, Field(ge=1, le=255)], ...]


class _Edit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rotate(_Edit):
    """A small random 3D rotation about the volume centre, nearest neighbour, within +-max_degrees per axis.

    Angles are in voxel index space (the store's voxels may be anisotropic; at a few degrees this is minor).
    """

    kind: Literal["rotate"] = "rotate"
    max_degrees: float = Field(2.5, ge=0, le=180)


class FlipLeftRight(_Edit):
    """Mirror the W (left-right) axis with the given probability."""

    kind: Literal["flip"] = "flip"
    probability: float = Field(0.5, ge=0, le=1)


class ShiftLabels(_Edit):
    """Move the chosen labels, as one rigid block, in-plane towards the body centre by a random distance.

    The distance is drawn from `[min_voxels, max_voxels]` and capped at the distance to the centre, so a
    lesion never crosses to the other side; the vacated voxels take the surrounding label.
    """

    kind: Literal["shift"] = "shift"
    labels: LabelSet = Field((1, 2, 3), min_length=1)
    min_voxels: int = Field(20, ge=0)
    max_voxels: int = Field(60, ge=0)

    @model_validator(mode="after")
    def _check_range(self) -> ShiftLabels:
        if self.min_voxels > self.max_voxels:
            raise ValueError(f"min_voxels {self.min_voxels} exceeds max_voxels {self.max_voxels}")
        return self


class RemoveLabel(_Edit):
    """Healthy counterfactual: each removed region takes the most common label on its border (or 0)."""

    kind: Literal["remove"] = "remove"
    labels: LabelSet = Field(min_length=1)


class PasteLesion(_Edit):
    """Copy the voxels of the chosen labels from another case's mask, translated by `offset` (dz, dy, dx).

    The source array is passed to `apply_edits` in `lesion_sources[source_case_id]`; the record keeps only
    the case id and the array's sha256.
    """

    kind: Literal["paste"] = "paste"
    source_case_id: str = Field(min_length=1, pattern=r"^[^:\s]+$")
    labels: LabelSet = Field(min_length=1)
    offset: tuple[int, int, int] = (0, 0, 0)


Edit = Annotated[Rotate | FlipLeftRight | ShiftLabels | RemoveLabel | PasteLesion, Field(discriminator="kind")]


class AppliedEdit(BaseModel):
    """One edit as applied: its declared parameters and the concrete values it sampled or measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    edit: Edit
    sampled: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.edit.kind

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record: {"kind", "params", "sampled"}."""
        params = self.edit.model_dump(mode="json", exclude={"kind"})
        return {"kind": self.edit.kind, "params": params, "sampled": dict(self.sampled)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> AppliedEdit:
        """Inverse of `to_dict` (e.g. from a lineage record's `mask_edits`)."""
        edit = _EDIT_ADAPTER.validate_python({"kind": record["kind"], **record["params"]})
        return cls(edit=edit, sampled=record["sampled"])


_EDIT_ADAPTER: TypeAdapter[Edit] = TypeAdapter(Edit)


def rotation_matrix(degrees: tuple[float, float, float] | list[float]) -> np.ndarray:
    """The 3x3 rotation moving points in (z, h, w) voxel coordinates, for angles about the Z, H, W axes.

    The three plane rotations are applied in order about Z (the H-W plane), H (Z-W), then W (Z-H), each with
    the sign convention of `scipy.ndimage.rotate` on the matching pair of axes.
    """
    moved = np.eye(3)
    for axis, angle in enumerate(degrees):
        first, second = [other for other in range(3) if other != axis]
        radians = np.deg2rad(angle)
        # scipy.ndimage.rotate reads input = M @ output, M = [[cos, sin], [-sin, cos]]: points move by M.T
        plane = np.eye(3)
        plane[first, first] = plane[second, second] = np.cos(radians)
        plane[first, second] = -np.sin(radians)
        plane[second, first] = np.sin(radians)
        moved = plane @ moved
    return moved


def _rotate(volume: np.ndarray, degrees: list[float]) -> np.ndarray:
    inverse = rotation_matrix(degrees).T
    centre = (np.asarray(volume.shape, dtype=np.float64) - 1) / 2
    offset = centre - inverse @ centre
    return ndimage.affine_transform(volume, inverse, offset=offset, order=0, mode="constant", cval=0)


def _flip(volume: np.ndarray, flipped: bool) -> np.ndarray:
    return np.ascontiguousarray(volume[:, :, ::-1]) if flipped else volume


def _place(values: np.ndarray, offset: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """`values` translated by `offset` into a zero array of `shape`; what falls outside is clipped."""
    placed = np.zeros(shape, dtype=values.dtype)
    source, target = [], []
    for size, out_size, shift in zip(values.shape, shape, offset, strict=True):
        start, out_start = max(0, -shift), max(0, shift)
        length = min(size - start, out_size - out_start)
        if length <= 0:
            return placed
        source.append(slice(start, start + length))
        target.append(slice(out_start, out_start + length))
    placed[tuple(target)] = values[tuple(source)]
    return placed


def _fill_from_surroundings(label: np.ndarray, removed: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Set each connected removed region to the most common non-removed label on its border (0 if none)."""
    filled = label.copy()
    regions, _ = ndimage.label(removed)
    fills = []
    for index, box in enumerate(ndimage.find_objects(regions), start=1):
        padded = tuple(
            slice(max(0, part.start - 1), min(size, part.stop + 1)) for part, size in zip(box, label.shape, strict=True)
        )
        region = regions[padded] == index
        border = ndimage.binary_dilation(region) & ~removed[padded]
        neighbours = label[padded][border]
        fill = int(np.bincount(neighbours).argmax()) if neighbours.size else 0
        filled[padded][region] = fill
        fills.append(fill)
    return filled, fills


def _body_centre(label: np.ndarray, body_mask: np.ndarray | None) -> np.ndarray | None:
    foreground = body_mask.astype(bool) if body_mask is not None else label > 0
    if not foreground.any():
        return None
    return np.argwhere(foreground).mean(axis=0)


def _shift_vector(label: np.ndarray, lesion: np.ndarray, body_mask: np.ndarray | None, distance: int) -> list[int]:
    centre = _body_centre(label, body_mask)
    if centre is None or not lesion.any():
        return [0, 0, 0]
    towards = (centre - np.argwhere(lesion).mean(axis=0))[1:]  # in-plane (H, W) only
    length = float(np.linalg.norm(towards))
    if length < 1e-9:
        return [0, 0, 0]
    step = np.rint(towards / length * min(distance, length)).astype(int)
    return [0, int(step[0]), int(step[1])]


def _move_labels(label: np.ndarray, labels: tuple[int, ...], shift: list[int]) -> tuple[np.ndarray, dict]:
    lesion = np.isin(label, labels)
    moved_values = _place(np.where(lesion, label, 0).astype(label.dtype), tuple(shift), label.shape)
    base, _ = _fill_from_surroundings(label, lesion)
    edited = np.where(moved_values > 0, moved_values, base).astype(label.dtype)
    kept = int(np.count_nonzero(moved_values))
    return edited, {"moved_voxels": kept, "clipped_voxels": int(lesion.sum()) - kept}


def _paste(label: np.ndarray, edit: PasteLesion, source: np.ndarray) -> tuple[np.ndarray, dict]:
    lesion = np.where(np.isin(source, edit.labels), source, 0).astype(label.dtype)
    placed = _place(lesion, edit.offset, label.shape)
    pasted = int(np.count_nonzero(placed))
    edited = np.where(placed > 0, placed, label).astype(label.dtype)
    return edited, {"pasted_voxels": pasted, "clipped_voxels": int(np.count_nonzero(lesion)) - pasted}


def _lesion_source(edit: PasteLesion, lesion_sources: dict[str, np.ndarray] | None) -> np.ndarray:
    if not lesion_sources or edit.source_case_id not in lesion_sources:
        raise InvalidEditError(edit.source_case_id, "paste needs this case's mask in lesion_sources")
    source = np.asarray(lesion_sources[edit.source_case_id])
    if source.ndim != 3:
        raise InvalidEditError(edit.source_case_id, f"lesion source must be (Z, H, W), got {source.shape}")
    return source


def _sample(
    edit: Edit,
    label: np.ndarray,
    rng: np.random.Generator,
    body_mask: np.ndarray | None,
    sources: dict | None,
) -> dict[str, Any]:
    """The concrete values `edit` needs to act deterministically on `label`."""
    if isinstance(edit, Rotate):
        return {"degrees": [float(angle) for angle in rng.uniform(-edit.max_degrees, edit.max_degrees, 3)]}
    if isinstance(edit, FlipLeftRight):
        return {"flipped": bool(rng.random() < edit.probability)}
    if isinstance(edit, ShiftLabels):
        distance = int(rng.integers(edit.min_voxels, edit.max_voxels, endpoint=True))
        shift = _shift_vector(label, np.isin(label, edit.labels), body_mask, distance)
        return {"distance_voxels": distance, "shift": shift}
    if isinstance(edit, PasteLesion):
        return {"source_sha256": sha256_array(_lesion_source(edit, sources))}
    return {}


def _act(
    label: np.ndarray, edit: Edit, sampled: dict[str, Any], sources: dict | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply `edit` with its concrete values; return the new mask and any measured values to record."""
    if isinstance(edit, Rotate):
        return _rotate(label, sampled["degrees"]), {}
    if isinstance(edit, FlipLeftRight):
        return _flip(label, sampled["flipped"]), {}
    if isinstance(edit, ShiftLabels):
        return _move_labels(label, edit.labels, sampled["shift"])
    if isinstance(edit, RemoveLabel):
        removed = np.isin(label, edit.labels)
        edited, fills = _fill_from_surroundings(label, removed)
        return edited, {"removed_voxels": int(removed.sum()), "fill_labels": fills}
    source = _lesion_source(edit, sources)
    actual = sha256_array(source)
    if actual != sampled["source_sha256"]:
        raise InvalidEditError(
            edit.source_case_id,
            f"lesion source sha256 {actual} differs from recorded {sampled['source_sha256']}",
        )
    return _paste(label, edit, source)


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label volume must be (Z, H, W), got shape {label.shape}")
    return label


def apply_geometry(mask: np.ndarray, applied: list[AppliedEdit]) -> np.ndarray:
    """Apply only the rotations and flips of `applied` to another volume (e.g. the body mask), in order."""
    for record in applied:
        if isinstance(record.edit, Rotate):
            mask = _rotate(mask, record.sampled["degrees"])
        elif isinstance(record.edit, FlipLeftRight):
            mask = _flip(mask, record.sampled["flipped"])
    return mask


def apply_edits(
    label: np.ndarray,
    edits: list[Edit],
    seed: int,
    body_mask: np.ndarray | None = None,
    lesion_sources: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[AppliedEdit]]:
    """Apply `edits` in order with randomness derived from `seed`; return the mask and the records.

    Each edit draws from its own child of `SeedSequence(seed)`, so appending an edit leaves earlier draws
    unchanged. `body_mask` (image foreground) sets the centre for shifts and follows rotations and flips.
    """
    label = _check_label(label)
    body = None if body_mask is None else np.asarray(body_mask).astype(np.uint8)
    streams = np.random.SeedSequence(seed).spawn(len(edits))
    applied: list[AppliedEdit] = []
    for edit, stream in zip(edits, streams, strict=True):
        sampled = _sample(edit, label, np.random.default_rng(stream), body, lesion_sources)
        label, measured = _act(label, edit, sampled, lesion_sources)
        record = AppliedEdit(edit=edit, sampled={**sampled, **measured})
        if body is not None:
            body = apply_geometry(body, [record])
        applied.append(record)
    return label, applied


def replay_edits(
    label: np.ndarray, applied: list[AppliedEdit], lesion_sources: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Reproduce `apply_edits` from its records, without randomness (paste sources are checked by sha256)."""
    label = _check_label(label)
    for record in applied:
        label, _ = _act(label, record.edit, record.sampled, lesion_sources)
    return label


def validate_mask(
    label: np.ndarray,
    allowed_labels: set[int],
    body_mask: np.ndarray | None = None,
    lesion_labels: tuple[int, ...] = (),
    case_id: str | None = None,
    outside_tolerance: float = 0.01,
) -> None:
    """Raise `InvalidEditError` if an edited mask has unknown labels, no foreground, or lesions off the body.

    Background 0 is always allowed. Lesion voxels are those of `lesion_labels` (all foreground when empty);
    more than `outside_tolerance` of them outside `body_mask` is an error.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise InvalidEditError(case_id, f"mask must be (Z, H, W), got shape {label.shape}")
    unknown = sorted(set(np.unique(label).tolist()) - set(allowed_labels) - {0})
    if unknown:
        raise InvalidEditError(case_id, f"mask has labels {unknown} outside allowed {sorted(allowed_labels)}")
    if not label.any():
        raise InvalidEditError(case_id, "mask is empty: no foreground voxels")
    if body_mask is None:
        return
    if body_mask.shape != label.shape:
        raise InvalidEditError(case_id, f"body mask shape {body_mask.shape} differs from mask {label.shape}")
    lesion = np.isin(label, lesion_labels) if lesion_labels else label > 0
    total = int(lesion.sum())
    outside = int((lesion & ~body_mask.astype(bool)).sum())
    if total and outside / total > outside_tolerance:
        raise InvalidEditError(
            case_id,
            f"{outside} of {total} lesion voxels ({outside / total:.1%}) lie outside the body mask "
            f"(tolerance {outside_tolerance:.1%})",
        )


def _labels_text(labels: tuple[int, ...]) -> str:
    return ",".join(str(value) for value in labels)


def _parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {text!r}") from None


def _parse_number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None


_GRAMMAR = "rotate[:DEG] | flip[:P] | shift:LABELS:MIN[:MAX] | remove:LABELS | paste:CASE:LABELS[:DZ,DY,DX]"


def parse_edit(text: str) -> Edit:
    """Parse a CLI edit: "rotate:2.5", "flip" (probability 0.5; "flip:1" always), "shift:1,2,3:20:60",
    "remove:1,2,3", "paste:CASEID:1,2,3" or "paste:CASEID:1,2,3:0,4,-4"."""
    name, *args = text.strip().split(":")
    try:
        if name == "rotate" and len(args) <= 1:
            return Rotate(max_degrees=_parse_number(args[0], "rotate degrees")) if args else Rotate()
        if name == "flip" and len(args) <= 1:
            return FlipLeftRight(probability=_parse_number(args[0], "flip probability")) if args else FlipLeftRight()
        if name == "shift" and len(args) in (2, 3):
            low, high = _parse_int(args[1], "shift minimum"), _parse_int(args[-1], "shift maximum")
            return ShiftLabels(labels=_parse_ints(args[0], "shift labels"), min_voxels=low, max_voxels=high)
        if name == "remove" and len(args) == 1:
            return RemoveLabel(labels=_parse_ints(args[0], "remove labels"))
        if name == "paste" and len(args) in (2, 3):
            offset = _parse_ints(args[2], "paste offset") if len(args) == 3 else (0, 0, 0)
            return PasteLesion(source_case_id=args[0], labels=_parse_ints(args[1], "paste labels"), offset=offset)
    except ValueError as error:
        raise ValueError(f"invalid edit {text!r}: {error}") from None
    raise ValueError(f"invalid edit {text!r}; expected {_GRAMMAR}")


def format_edit(edit: Edit) -> str:
    """The CLI text of an edit; `parse_edit(format_edit(edit)) == edit`."""
    if isinstance(edit, Rotate):
        return f"rotate:{edit.max_degrees:g}"
    if isinstance(edit, FlipLeftRight):
        return f"flip:{edit.probability:g}"
    if isinstance(edit, ShiftLabels):
        return f"shift:{_labels_text(edit.labels)}:{edit.min_voxels}:{edit.max_voxels}"
    if isinstance(edit, RemoveLabel):
        return f"remove:{_labels_text(edit.labels)}"
    return f"paste:{edit.source_case_id}:{_labels_text(edit.labels)}:{_labels_text(edit.offset)}"


@dataclass(frozen=True)
class EditProfile:
    """What the `ma` augmentation may do on one kind of dataset, beyond the small rotation it always applies.

    `shift_labels` are the movable lesion labels (shifted towards the body centre); `flip_probability` is the
    chance of a left-right mirror, zero where the anatomy is not left-right symmetric (the liver is on one side).
    """

    shift_labels: tuple[int, ...] = ()
    flip_probability: float = 0.0


EDIT_PROFILES: dict[str, EditProfile] = {
    "brain": EditProfile(shift_labels=(1, 2, 3), flip_probability=0.5),  # BraTS tumour labels; symmetric brain
    "abdomen": EditProfile(),  # organs are not lesions and the liver has a side: rotation only, as the authors do
    "rotation_only": EditProfile(),  # any dataset we know nothing about
}
DATASET_PROFILES: tuple[tuple[str, str], ...] = (
    ("braintumo", "brain"),  # MSD Task01 "BrainTumour"
    ("brats", "brain"),
    ("phantombrain", "brain"),  # `gem3d.io.phantoms` "gem3d-phantom-brain"
    ("abdomenct", "abdomen"),  # "AbdomenCT-1K"
    ("phantomabdomen", "abdomen"),
)
"""(fragment of a normalised dataset name, profile): the first fragment the name contains picks the profile."""


def profile_for_dataset(dataset_name: str | None) -> str:
    """The edit profile of a dataset named in its dataset.json ("BrainTumour", "AbdomenCT-1K", ...).

    The name is lower-cased and stripped of separators before matching; unknown or missing: "rotation_only".
    """
    normalised = re.sub(r"[^a-z0-9]", "", (dataset_name or "").lower())
    return next((profile for fragment, profile in DATASET_PROFILES if fragment in normalised), "rotation_only")


def resolve_edit_profile(edit_config: EditConfig, dataset_name: str | None) -> EditProfile:
    """The profile the config selects (or, for "auto", the dataset's), with the config's explicit values winning."""
    name = profile_for_dataset(dataset_name) if edit_config.profile == "auto" else edit_config.profile
    profile = EDIT_PROFILES[name]
    return EditProfile(
        shift_labels=profile.shift_labels if edit_config.shift_labels is None else edit_config.shift_labels,
        flip_probability=(
            profile.flip_probability if edit_config.flip_probability is None else edit_config.flip_probability
        ),
    )


def default_augmentation(edit_config: EditConfig, dataset_name: str | None = None) -> list[Edit]:
    """The paper's `ma` edits for a dataset: a small rotation, then a left-right flip and a shift of the movable
    lesion labels where its edit profile allows them (`resolve_edit_profile`). Shift distances are in store voxels."""
    profile = resolve_edit_profile(edit_config, dataset_name)
    edits: list[Edit] = [Rotate(max_degrees=edit_config.max_rotation_degrees)]
    if profile.flip_probability > 0:
        edits.append(FlipLeftRight(probability=profile.flip_probability))
    if profile.shift_labels:
        low, high = edit_config.shift_voxels
        edits.append(ShiftLabels(labels=profile.shift_labels, min_voxels=low, max_voxels=high))
    return edits
