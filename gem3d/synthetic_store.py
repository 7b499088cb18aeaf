"""The synthetic Zarr store: generated volumes laid out like the real store, each with its lineage.

Layout::

    SYNTHETIC/                      Zarr group (attrs: kind "synthetic", ...)
      cases/<synthetic_id>/image    (Z, H, W) float32 in [-1, 1]
      cases/<synthetic_id>/label    (Z, H, W) uint8: the mask actually used (after edits)
      cases/<synthetic_id>          attrs: lineage record, source case id, setting, plan
      lineage.parquet               one row per synthetic id (`lineage.write_lineage_table`)
      quarantine.json               plans or volumes refused, with the reason

Volumes are staged in the store's staging sibling, read back and checked, then published by one rename;
an id already published is skipped, so a rerun with the same inputs does no work.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from gem3d.errors import StoreError
from gem3d.label_intensity import label_means
from gem3d.lineage import LineageRecord, missing_fields, sha256_array, write_lineage_table
from gem3d.store import (
    CASES,
    QUARANTINE,
    discard_staged,
    init_store,
    publish_case,
    stage_case,
    staging_dir,
    write_json_atomic,
)

if TYPE_CHECKING:
    from gem3d.synthesis import SyntheticVolume

LINEAGE = "lineage.parquet"


def synthetic_exists(store: str | Path, synthetic_id: str) -> bool:
    """Whether `synthetic_id` is already published (reruns skip it)."""
    return (Path(store) / CASES / synthetic_id / "zarr.json").exists()


def list_synthetic(store: str | Path) -> list[str]:
    """Published synthetic ids, sorted; an absent store has none."""
    cases_dir = Path(store) / CASES
    if not cases_dir.is_dir():
        return []
    return sorted(path.name for path in cases_dir.iterdir() if (path / "zarr.json").exists())


def synthetic_row(volume: SyntheticVolume) -> dict:
    """One row of the per-volume table the synthetic data contract validates (plus source and setting).

    Besides the clipped image's statistics: the values before the clip (`clamp_recorded`, `unclamped_min`,
    `unclamped_max`, `clamped_fraction`; NaN and `clamp_recorded` False for a volume not made by `synthesize`,
    e.g. read back from a store) and `label_<k>_mean`, the mean intensity inside each label of its mask.
    """
    image = np.asarray(volume.image)
    finite = np.isfinite(image)
    values = image[finite]
    recorded = volume.clamped_fraction is not None and volume.unclamped_range is not None
    low, high = volume.unclamped_range if recorded else (float("nan"), float("nan"))
    label_means_row = {}
    if image.shape == volume.mask.shape:
        label_means_row = {f"label_{value}_mean": mean for value, mean in label_means(image, volume.mask).items()}
    return {
        "synthetic_id": volume.plan.synthetic_id,
        "source_case_id": volume.plan.source_case_id,
        "setting": volume.plan.setting,
        "shape_matches_mask": image.shape == volume.mask.shape,
        "nonfinite_voxels": int(image.size - np.count_nonzero(finite)),
        "image_min": float(values.min()) if values.size else float("nan"),
        "image_max": float(values.max()) if values.size else float("nan"),
        "image_std": float(values.std()) if values.size else float("nan"),
        "lineage_missing": len(missing_fields(volume.lineage)),
        "clamp_recorded": recorded,
        "unclamped_min": float(low),
        "unclamped_max": float(high),
        "clamped_fraction": float(volume.clamped_fraction) if recorded else float("nan"),
        **label_means_row,
    }


def _check_staged(staged: Path, volume: SyntheticVolume) -> None:
    """Read the staged arrays back and compare their content hashes with the volume's."""
    group = zarr.open_group(staged, mode="r")
    image, label = group["image"][:], group["label"][:]
    expected = (sha256_array(volume.image.astype(np.float32)), sha256_array(volume.mask.astype(np.uint8)))
    if (sha256_array(image), sha256_array(label)) != expected:
        raise StoreError(staged, f"staged volume {volume.plan.synthetic_id} does not read back identically")


def write_synthetic(
    store: str | Path,
    volumes: Sequence[SyntheticVolume],
    flow_run_id: str | None = None,
    generation: dict | None = None,
) -> list[str]:
    """Publish each volume not yet in the store (staged, checked, renamed); see `rebuild_lineage_table`.

    Returns the ids written; already published ids are skipped. `flow_run_id` fills the records' field;
    `generation` (`gem3d.reproduce.generation_record`) is stored with each volume so it can be regenerated.
    """
    store = init_store(store, {"kind": "synthetic"})
    written = []
    for volume in volumes:
        synthetic_id = volume.plan.synthetic_id
        if synthetic_exists(store, synthetic_id):
            continue
        record = volume.lineage
        if flow_run_id is not None:
            record = record.model_copy(update={"flow_run_id": flow_run_id})
        attributes = {
            "source_case_id": volume.plan.source_case_id,
            "setting": volume.plan.setting,
            "plan": volume.plan.model_dump(mode="json"),
            "lineage": record.model_dump(mode="json"),
            **({"generation": generation} if generation is not None else {}),
        }
        staged = stage_case(store, synthetic_id, volume.image.astype(np.float32), volume.mask, attributes)
        try:
            _check_staged(staged, volume)
        except BaseException:
            discard_staged(staged)
            raise
        publish_case(store, synthetic_id, staged)
        written.append(synthetic_id)
    return written


def rebuild_lineage_table(store: str | Path) -> Path:
    """Write `lineage.parquet` from the published volumes' attributes (the source of truth).

    Done once after a fan-out rather than per batch, so parallel writers never race on the table.
    """
    records = [
        LineageRecord.model_validate(synthetic_attributes(store, synthetic_id)["lineage"])
        for synthetic_id in list_synthetic(store)
    ]
    path = Path(store) / LINEAGE
    path.unlink(missing_ok=True)
    if records:
        write_lineage_table(records, path)
    return path


def synthetic_attributes(store: str | Path, synthetic_id: str) -> dict:
    """Attributes of a published synthetic volume (lineage, source case id, setting, plan)."""
    path = Path(store) / CASES / synthetic_id
    if not (path / "zarr.json").exists():
        raise StoreError(path, f"synthetic volume {synthetic_id!r} is not in the store")
    return dict(zarr.open_group(path, mode="r").attrs)


def read_synthetic(store: str | Path, synthetic_id: str) -> tuple[np.ndarray, np.ndarray, LineageRecord]:
    """A published volume: `(Z, H, W)` image and mask, and its lineage record."""
    attributes = synthetic_attributes(store, synthetic_id)
    group = zarr.open_group(Path(store) / CASES / synthetic_id, mode="r")
    return group["image"][:], group["label"][:], LineageRecord.model_validate(attributes["lineage"])


def volume_digests(store: str | Path) -> dict[str, str]:
    """sha256 of every published volume's image and mask, by id: what "bit-identical reruns" compares."""
    digests = {}
    for synthetic_id in list_synthetic(store):
        image, mask, _ = read_synthetic(store, synthetic_id)
        digests[synthetic_id] = f"{sha256_array(image)}:{sha256_array(mask)}"
    return digests


def quarantine(store: str | Path, synthetic_id: str, reason: str) -> Path:
    """Append `synthetic_id` and the reason to the store's `quarantine.json` (rewritten atomically).

    A lock file serialises writers, so parallel batches never lose each other's entries.
    """
    path = Path(store) / QUARANTINE
    path.parent.mkdir(parents=True, exist_ok=True)
    staging_dir(store).mkdir(parents=True, exist_ok=True)
    with open(staging_dir(store) / "quarantine.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = json.loads(path.read_text()) if path.exists() else []
        entries.append(
            {
                "synthetic_id": synthetic_id,
                "reason": reason,
                "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        return write_json_atomic(path, entries)
