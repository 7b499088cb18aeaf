"""The Zarr v3 store of preprocessed cases: layout, atomic case writes, window reads and the manifest.

Layout::

    STORE/                     Zarr group (attrs: format version, config hash, labels, modality)
      cases/<case_id>/image    (Z, H, W) float32 in [-1, 1], chunks of SLICES_PER_CHUNK slices
      cases/<case_id>/label    (Z, H, W) uint8, same chunks
      cases/<case_id>/outline  (Z, H, W) uint8 0/1, the anatomy outline (`gem3d.anatomy`), same chunks
      cases/<case_id>          attrs: affine, spacing, geometry, normalisation, hashes, config hash
      manifest.parquet         one row per case (rebuilt from the case attributes)
      quarantine.json          cases refused, with file and reason
      validation/              data contract results

A case is written as a standalone group in `STORE.staging/` and published by one directory rename,
so an interrupted run never leaves a half-written case in the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from gem3d.errors import StoreError

FORMAT_VERSION = 1
CASES = "cases"
MANIFEST = "manifest.parquet"
QUARANTINE = "quarantine.json"
SLICES_PER_CHUNK = 4
OUTLINE = "outline"


def staging_dir(store: str | Path) -> Path:
    """Sibling folder where cases are assembled before being published into the store."""
    store = Path(store)
    return store.parent / f".{store.name}.staging"


def init_store(store: str | Path, attributes: dict) -> Path:
    """Create (or open) the store's root group and record store-wide attributes."""
    store = Path(store)
    root = zarr.open_group(store, mode="a")
    root.require_group(CASES)
    root.attrs.update({"format_version": FORMAT_VERSION, **attributes})
    staging_dir(store).mkdir(parents=True, exist_ok=True)
    return store


def store_attributes(store: str | Path) -> dict:
    """The root group's attributes (labels, modality, config hash, ...)."""
    return dict(_open_root(store).attrs)


def _open_root(store: str | Path) -> zarr.Group:
    store = Path(store)
    if not (store / "zarr.json").exists():
        raise StoreError(store, "not a gem3d Zarr store (no zarr.json)")
    return zarr.open_group(store, mode="r")


def list_cases(store: str | Path) -> list[str]:
    """Published case ids, sorted; staging leftovers are never listed."""
    cases_dir = Path(store) / CASES
    if not cases_dir.is_dir():
        raise StoreError(store, "store has no cases group")
    return sorted(p.name for p in cases_dir.iterdir() if (p / "zarr.json").exists())


def case_attributes(store: str | Path, case_id: str) -> dict:
    """Attributes of one published case; raises StoreError when it does not exist."""
    path = Path(store) / CASES / case_id
    if not (path / "zarr.json").exists():
        raise StoreError(path, f"case {case_id!r} is not in the store")
    return dict(zarr.open_group(path, mode="r").attrs)


def stage_case(
    store: str | Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray,
    attributes: dict,
    outline: np.ndarray | None,
) -> Path:
    """Write one case as a standalone group in the staging folder; nothing in the store changes yet.

    `outline` is the anatomy outline; None writes none (a synthetic volume made without one).
    """
    shapes = {image.shape, label.shape} | ({outline.shape} if outline is not None else set())
    if len(shapes) != 1 or image.ndim != 3:
        shown = "" if outline is None else f" and outline {outline.shape}"
        raise StoreError(case_id, f"image {image.shape}, label {label.shape}{shown} must be equal (Z, H, W)")
    staging = Path(tempfile.mkdtemp(prefix=f"{case_id}.", dir=staging_dir(store)))
    group = zarr.open_group(staging, mode="w")
    _, height, width = image.shape
    chunks = (SLICES_PER_CHUNK, height, width)
    group.create_array("image", data=image.astype(np.float32), chunks=chunks)
    group.create_array("label", data=label.astype(np.uint8), chunks=chunks)
    if outline is not None:
        group.create_array(OUTLINE, data=outline.astype(np.uint8), chunks=chunks)
    group.attrs.update({"case_id": case_id, **attributes})
    return staging


def publish_case(store: str | Path, case_id: str, staged: Path) -> Path:
    """Move a staged case into the store with one rename, replacing an older version of the same case."""
    target = Path(store) / CASES / case_id
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f"{case_id}.old.", dir=staging_dir(store)))
        os.replace(target, retired / case_id)
        os.replace(staged, target)
        shutil.rmtree(retired)
    else:
        os.replace(staged, target)
    return target


def discard_staged(staged: Path) -> None:
    """Remove a staged case that will not be published (it failed a contract)."""
    shutil.rmtree(staged, ignore_errors=True)


def clear_staging(store: str | Path) -> None:
    """Remove leftovers of interrupted runs; published cases are untouched."""
    folder = staging_dir(store)
    if folder.exists():
        for child in folder.iterdir():
            shutil.rmtree(child, ignore_errors=True)


def open_case_arrays(store: str | Path, case_id: str) -> tuple[zarr.Array, zarr.Array]:
    """Lazy `(Z, H, W)` image and label arrays of a case: indexing reads only the chunks it touches."""
    path = Path(store) / CASES / case_id
    try:
        return zarr.open_array(path / "image", mode="r"), zarr.open_array(path / "label", mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as error:
        raise StoreError(path, f"case {case_id!r} is not in the store") from error


def open_case_outline(store: str | Path, case_id: str) -> zarr.Array:
    """The lazy `(Z, H, W)` anatomy outline of a case; a store written before outlines existed is refused."""
    path = Path(store) / CASES / case_id
    try:
        return zarr.open_array(path / OUTLINE, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as error:
        raise StoreError(
            path, f"case {case_id!r} has no anatomy outline (written by an older gem3d): run `gem3d preprocess` again"
        ) from error


def read_window(store: str | Path, case_id: str, start_slice: int, window_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices `start_slice .. start_slice + window_length - 1` of a case: `(L, H, W)` image and label."""
    image, label = open_case_arrays(store, case_id)
    stop = start_slice + window_length
    if start_slice < 0 or stop > image.shape[0]:
        raise StoreError(case_id, f"window {start_slice}:{stop} outside {image.shape[0]} slices")
    return image[start_slice:stop], label[start_slice:stop]


def read_case(store: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole case: `(Z, H, W)` image and label."""
    image, label = open_case_arrays(store, case_id)
    return image[:], label[:]


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, payload: object) -> Path:
    """Write JSON under a temporary name and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
    return path


def write_table_atomic(path: str | Path, table: pd.DataFrame) -> Path:
    """Write a parquet table under a temporary name and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        table.to_parquet(temporary, index=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_manifest(store: str | Path) -> pd.DataFrame:
    """The manifest table written by the preprocessing flow."""
    path = Path(store) / MANIFEST
    if not path.exists():
        raise StoreError(path, "store has no manifest; run `gem3d preprocess` first")
    return pd.read_parquet(path)


def manifest_digest(store: str | Path) -> str:
    """Content digest of the manifest table (not of its file bytes): names the training data in lineage."""
    manifest = read_manifest(store)
    rows = pd.util.hash_pandas_object(manifest.sort_values("case_id"), index=False).to_numpy()
    columns = ",".join(manifest.columns).encode()
    return hashlib.sha256(columns + rows.tobytes()).hexdigest()
