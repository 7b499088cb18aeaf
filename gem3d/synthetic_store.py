"""The synthetic Zarr store: generated volumes laid out like the real store, each with its lineage.

Layout::

    SYNTHETIC/                      Zarr group (attrs: kind "synthetic", ...)
      cases/<synthetic_id>/image    (Z, H, W) float32 in [-1, 1]
      cases/<synthetic_id>/label    (Z, H, W) uint8: the mask actually used (after edits)
      cases/<synthetic_id>          attrs: lineage record (with the image and mask sha256), source case id,
                                    setting, plan, generation, and `digests` (sha256 of each other attribute)
      lineage.parquet               one row per synthetic id, hash-chained (`lineage.write_lineage_table`)
      lineage.digest.json           the table digest (last chain digest) when the table was rebuilt
      quarantine.json               plans or volumes refused, with the reason

Volumes are staged in the store's staging sibling, read back and checked, then published by one rename;
an id already published is skipped, so a rerun with the same inputs does no work. `audit_synthetic_store`
proves a store: voxels, records, table and the files the records name.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from gem3d.errors import MissingFileError, StoreError
from gem3d.label_intensity import label_means
from gem3d.lineage import (
    CHAIN_COLUMN,
    DIGESTS_ATTRIBUTE,
    AuditProblem,
    AuditReport,
    LineageRecord,
    attribute_digests,
    broken_links,
    changed_fields,
    content_sha256,
    file_hash_jobs,
    file_problems,
    missing_fields,
    read_lineage_rows,
    row_attribute_digests,
    row_fields,
    row_record,
    run_in_threads,
    sha256_array,
    table_digest,
    write_lineage_table,
)
from gem3d.store import (
    CASES,
    OUTLINE,
    QUARANTINE,
    clear_staging,
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
LINEAGE_DIGEST = "lineage.digest.json"
PUBLICATION_LOCK = "publication.lock"
WRITERS_LOCK = "writers.lock"


def _lock_file(store: Path, name: str) -> Path:
    """A lock file in the store's `.NAME.locks` sibling: on the store's file system, outside the Zarr tree and
    the staging folder (which holds only what is being staged)."""
    folder = store.parent / f".{store.name}.locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


@contextmanager
def publication_lock(store: str | Path) -> Iterator[None]:
    """Hold the store's publication lock: one publication or lineage-table rebuild at a time, across the
    threads, processes and machines (on a shared file system) writing the same synthetic store."""
    with open(_lock_file(Path(store), PUBLICATION_LOCK), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def synthetic_writer(store: str | Path) -> Iterator[None]:
    """Be one of the store's writers for the block (a shared lock); clear staging leftovers of killed runs
    first only when no other writer is active, as their staged volumes are not leftovers."""
    with open(_lock_file(Path(store), WRITERS_LOCK), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            clear_staging(store)
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield


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


def _check_staged(staged: Path, record: LineageRecord) -> None:
    """Read the staged arrays back and compare their content hashes with the ones the record will publish."""
    group = zarr.open_group(staged, mode="r")
    actual = (sha256_array(group["image"][:]), sha256_array(group["label"][:]))
    if actual != (record.image_sha256, record.mask_sha256):
        raise StoreError(staged, f"staged volume {record.synthetic_id} does not read back identically")


def _seal_staged(staged: Path) -> None:
    """Record the sha256 of each staged attribute as read back, so a later edit of any of them is named."""
    group = zarr.open_group(staged, mode="r+")
    group.attrs[DIGESTS_ATTRIBUTE] = attribute_digests(dict(group.attrs))


def _published_record(
    volume: SyntheticVolume, image: np.ndarray, mask: np.ndarray, flow_run_id: str | None
) -> LineageRecord:
    """The volume's lineage record as published: with the arrays' sha256 and the flow run, when given."""
    update: dict[str, Any] = {"image_sha256": sha256_array(image), "mask_sha256": sha256_array(mask)}
    if flow_run_id is not None:
        update["flow_run_id"] = flow_run_id
    return volume.lineage.model_copy(update=update)


def write_synthetic(
    store: str | Path,
    volumes: Sequence[SyntheticVolume],
    flow_run_id: str | None = None,
    generation: dict | None = None,
) -> list[str]:
    """Publish each volume not yet in the store (staged, checked, sealed, renamed); see `rebuild_lineage_table`.

    Returns the ids written; already published ids are skipped, also when another writer of the same store
    publishes one first (checked again under the publication lock). The record gains the sha256 of the image
    and mask (checked against the staged arrays read back) and `flow_run_id`; `generation`
    (`gem3d.reproduce.generation_record`) is stored with each volume so it can be regenerated.
    """
    with publication_lock(store):
        store = init_store(store, {"kind": "synthetic"})
    written = []
    for volume in volumes:
        synthetic_id = volume.plan.synthetic_id
        if synthetic_exists(store, synthetic_id):
            continue
        image, mask = volume.image.astype(np.float32), volume.mask.astype(np.uint8)
        record = _published_record(volume, image, mask, flow_run_id)
        attributes = {
            "source_case_id": volume.plan.source_case_id,
            "setting": volume.plan.setting,
            "plan": volume.plan.model_dump(mode="json"),
            "lineage": record.model_dump(mode="json"),
            **({"generation": generation} if generation is not None else {}),
        }
        staged = stage_case(store, synthetic_id, image, mask, attributes, outline=volume.outline)
        try:
            _check_staged(staged, record)
            _seal_staged(staged)
        except BaseException:
            discard_staged(staged)
            raise
        with publication_lock(store):
            if synthetic_exists(store, synthetic_id):
                discard_staged(staged)
                continue
            publish_case(store, synthetic_id, staged)
        written.append(synthetic_id)
    return written


def rebuild_lineage_table(store: str | Path, workers: int | None = None) -> Path:
    """Write `lineage.parquet` from the published volumes' attributes (the source of truth), and its digest.

    Done once after a fan-out rather than per batch, under the publication lock: writers sharing the store
    (other processes or machines) rebuild one at a time, each after its own publications, so the last table
    holds every published volume. The new table is written beside the old one and renamed over it. Each row
    keeps the attribute digests its volume recorded at publication; the table digest (last link of the
    chain) goes to `lineage.digest.json` (`read_lineage_digest`) for the audit and MLflow.
    """
    store = Path(store)
    with publication_lock(store):
        _rebuild_lineage_table(store, workers)
    return store / LINEAGE


def _rebuild_lineage_table(store: Path, workers: int | None) -> None:
    """`rebuild_lineage_table` without the lock."""
    ids = list_synthetic(store)
    attributes = run_in_threads({i: functools.partial(synthetic_attributes, store, i) for i in ids}, workers)
    records = [LineageRecord.model_validate(attributes[i]["lineage"]) for i in ids]
    path, digest_path = store / LINEAGE, store / LINEAGE_DIGEST
    if not records:
        path.unlink(missing_ok=True)
        digest_path.unlink(missing_ok=True)
        return
    fresh = store / f".{LINEAGE}.rebuild"
    fresh.unlink(missing_ok=True)
    digest = write_lineage_table(records, fresh, {i: attributes[i].get(DIGESTS_ATTRIBUTE) for i in ids})
    os.replace(fresh, path)
    write_json_atomic(
        digest_path,
        {
            "table": LINEAGE,
            "table_digest": digest,
            "records": len(records),
            "chain": "sha256(previous digest + newline + row canonical JSON), rows by synthetic_id",
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def read_lineage_digest(store: str | Path) -> dict | None:
    """The table digest recorded when the lineage table was last rebuilt (`table_digest`, `records`), if any."""
    path = Path(store) / LINEAGE_DIGEST
    return json.loads(path.read_text()) if path.exists() else None


def synthetic_attributes(store: str | Path, synthetic_id: str) -> dict:
    """Attributes of a published synthetic volume (lineage, source case id, setting, plan, digests)."""
    path = Path(store) / CASES / synthetic_id
    if not (path / "zarr.json").exists():
        raise StoreError(path, f"synthetic volume {synthetic_id!r} is not in the store")
    return dict(zarr.open_group(path, mode="r").attrs)


def read_synthetic(store: str | Path, synthetic_id: str) -> tuple[np.ndarray, np.ndarray, LineageRecord]:
    """A published volume: `(Z, H, W)` image and mask, and its lineage record."""
    attributes = synthetic_attributes(store, synthetic_id)
    group = zarr.open_group(Path(store) / CASES / synthetic_id, mode="r")
    return group["image"][:], group["label"][:], LineageRecord.model_validate(attributes["lineage"])


def read_synthetic_outline(store: str | Path, synthetic_id: str) -> np.ndarray | None:
    """A published volume's `(Z, H, W)` anatomy outline (its mask case's, edited with the mask); None if not stored."""
    group = zarr.open_group(Path(store) / CASES / synthetic_id, mode="r")
    return group[OUTLINE][:] if OUTLINE in group else None


def volume_digests(store: str | Path) -> dict[str, str]:
    """sha256 of every published volume's image and mask, by id: what "bit-identical reruns" compares."""
    digests = {}
    for synthetic_id in list_synthetic(store):
        image, mask, _ = read_synthetic(store, synthetic_id)
        digests[synthetic_id] = f"{sha256_array(image)}:{sha256_array(mask)}"
    return digests


@dataclass(frozen=True)
class _VolumeContent:
    """What the audit reads of one published volume: its attributes and its arrays' sha256 (or why not)."""

    attributes: dict
    image_sha256: str | None
    mask_sha256: str | None
    error: str | None = None


def _read_volume_content(store: Path, synthetic_id: str) -> _VolumeContent:
    """Open the volume once, read its attributes and hash its image and mask (one audit job)."""
    try:
        group = zarr.open_group(store / CASES / synthetic_id, mode="r")
        attributes = dict(group.attrs)
        return _VolumeContent(attributes, sha256_array(group["image"][:]), sha256_array(group["label"][:]))
    except Exception as error:  # an unreadable volume is a finding of the audit, not a crash of it
        return _VolumeContent({}, None, None, f"{type(error).__name__}: {error}")


def _differing(first: Mapping[str, str], second: Mapping[str, str]) -> list[str]:
    return sorted(key for key in set(first) | set(second) if first.get(key) != second.get(key))


def _table_problems(
    store: Path, rows: list[dict], expected_digest: str | None, edits: dict[str, list[str]]
) -> tuple[str, list[AuditProblem]]:
    """Check the chain row by row (edited rows go to `edits`) and the table digest against the recorded ones."""
    table, recorded, problems = str(store / LINEAGE), read_lineage_digest(store), []
    digest = table_digest(rows)
    if any(row.get(CHAIN_COLUMN) is None for row in rows):
        reason = "the lineage table has no hash chain (written before chains): its records cannot be proved"
        problems.append(AuditProblem(kind="unverifiable", path=table, reason=reason))
    else:
        for synthetic_id in broken_links(rows):
            edits.setdefault(synthetic_id, []).append(
                "table row edited after publication (its chain digest no longer covers it, or a row before it was"
                " removed)"
            )
    if recorded is None:
        reason = "the table digest written with the table is missing"
        problems.append(AuditProblem(kind="edited_table", path=str(store / LINEAGE_DIGEST), reason=reason))
    elif recorded.get("table_digest") != digest:
        reason = "the table no longer ends with the digest recorded when it was written (rows edited, added, removed)"
        problems.append(
            AuditProblem(
                kind="edited_table", path=table, reason=reason, expected=recorded.get("table_digest"), actual=digest
            )
        )
    if expected_digest is not None and expected_digest != digest:
        reason = "the table digest differs from the expected one (recorded in MLflow at publication)"
        problems.append(
            AuditProblem(kind="edited_table", path=table, reason=reason, expected=expected_digest, actual=digest)
        )
    return digest, problems


def _record_edits(row: dict, content: _VolumeContent) -> list[str]:
    """How the volume's attributes and its table row disagree with what was recorded at publication."""
    attributes = content.attributes
    published, tabled = attributes.get(DIGESTS_ATTRIBUTE), row_attribute_digests(row)
    reasons = []
    if published is not None and tabled is not None:
        if edited := _differing(published, attribute_digests(attributes)):
            reasons.append(f"volume attributes edited after publication: {', '.join(edited)}")
        if disagree := _differing(tabled, published):
            reasons.append(f"the table's and the volume's publication digests differ on: {', '.join(disagree)}")
        if tabled.get("lineage") != content_sha256(row_fields(row)):
            reasons.append("the table's record differs from the one published")
    fields = changed_fields(row_fields(row), attributes.get("lineage"))
    if fields:
        reasons.append(f"table and volume records differ in: {', '.join(fields)}")
    return reasons


def _volume_problems(store: Path, row: dict, content: _VolumeContent) -> list[AuditProblem]:
    """Voxels against the recorded sha256, and whether there is anything recorded to prove them with."""
    synthetic_id = row["synthetic_id"]
    folder = store / CASES / synthetic_id
    if content.error is not None:
        return [AuditProblem(kind="changed_volume", synthetic_id=synthetic_id, path=str(folder), reason=content.error)]
    problems = []
    if DIGESTS_ATTRIBUTE not in content.attributes or row_attribute_digests(row) is None:
        reason = "published without attribute digests: its record cannot be proved"
        problems.append(AuditProblem(kind="unverifiable", synthetic_id=synthetic_id, path=str(folder), reason=reason))
    recorded = {"image": row.get("image_sha256"), "label": row.get("mask_sha256")}
    actual = {"image": content.image_sha256, "label": content.mask_sha256}
    for array, expected in recorded.items():
        path = str(folder / array)
        if expected is None:
            reason = f"no sha256 recorded for the {array} (published before volume hashes)"
            problems.append(AuditProblem(kind="unverifiable", synthetic_id=synthetic_id, path=path, reason=reason))
        elif expected != actual[array]:
            problems.append(
                AuditProblem(
                    kind="changed_volume",
                    synthetic_id=synthetic_id,
                    path=path,
                    reason=f"{array} voxels changed since publication",
                    expected=expected,
                    actual=actual[array],
                )
            )
    return problems


def _presence_problems(store: Path, recorded: list[str], published: list[str]) -> list[AuditProblem]:
    """Recorded volumes that are gone, and published volumes the table does not record."""
    problems = [
        AuditProblem(
            kind="missing_volume",
            synthetic_id=synthetic_id,
            path=str(store / CASES / synthetic_id),
            reason="recorded in the lineage table but not in the store",
        )
        for synthetic_id in sorted(set(recorded) - set(published))
    ]
    problems += [
        AuditProblem(
            kind="unrecorded_volume",
            synthetic_id=synthetic_id,
            path=str(store / CASES / synthetic_id),
            reason="published but not recorded in the lineage table",
        )
        for synthetic_id in sorted(set(published) - set(recorded))
    ]
    return problems


def _valid_records(rows: list[dict], edits: dict[str, list[str]]) -> list[LineageRecord]:
    """The rows that still parse as lineage records; the others go to `edits`."""
    records = []
    for row in rows:
        try:
            records.append(row_record(row))
        except ValueError as error:
            edits.setdefault(row["synthetic_id"], []).append(f"table row is no longer a lineage record: {error}")
    return records


def _hash_all(
    store: Path,
    records: list[LineageRecord],
    volume_ids: list[str],
    workers: int | None,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, str | None], dict[str, _VolumeContent]]:
    """Hash each distinct referenced file and each volume once, together on one thread pool."""
    file_jobs = file_hash_jobs(records)
    jobs: dict[tuple[str, str], Callable[[], Any]] = {("file", path): job for path, job in file_jobs.items()}
    jobs.update({("volume", i): functools.partial(_read_volume_content, store, i) for i in volume_ids})
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        on_progress(done, len(jobs))

    results = run_in_threads(jobs, workers, advance if on_progress is not None else None)
    return {path: results[("file", path)] for path in file_jobs}, {i: results[("volume", i)] for i in volume_ids}


def audit_synthetic_store(
    store: str | Path,
    expected_digest: str | None = None,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Prove a synthetic store: every volume's voxels, its record in the table and in its attributes, the
    table's hash chain and digest (against `lineage.digest.json` and `expected_digest`, e.g. from MLflow),
    and every source file and checkpoint the records name.

    Distinct files and volumes are hashed once each on a thread pool of `workers`; `on_progress(done, total)`
    follows it. Raises `StoreError` for a path that is no Zarr store and `MissingFileError` for a store with
    neither volumes nor a lineage table.
    """
    store = Path(store)
    if not (store / "zarr.json").exists():
        raise StoreError(store, "not a synthetic Zarr store (no zarr.json)")
    published, table = list_synthetic(store), store / LINEAGE
    if not table.exists() and not published:
        raise MissingFileError(table, "lineage table not found")
    rows = read_lineage_rows(table) if table.exists() else []
    edits: dict[str, list[str]] = {}
    problems = [] if rows else [AuditProblem(kind="missing_table", path=str(table), reason="no lineage records")]
    digest, table_problems = _table_problems(store, rows, expected_digest, edits)
    problems += table_problems
    records = _valid_records(rows, edits)
    present = set(published)
    audited = {row["synthetic_id"]: row for row in rows if row["synthetic_id"] in present}
    file_hashes, contents = _hash_all(store, records, list(audited), workers, on_progress)
    problems += file_problems(records, file_hashes)
    problems += _presence_problems(store, [row["synthetic_id"] for row in rows], published)
    for synthetic_id, row in audited.items():
        problems += _volume_problems(store, row, contents[synthetic_id])
        if contents[synthetic_id].error is None:
            edits.setdefault(synthetic_id, []).extend(_record_edits(row, contents[synthetic_id]))
    problems += [
        AuditProblem(
            kind="edited_record",
            synthetic_id=i,
            path=str(store / CASES / i if i in present else table),
            reason="; ".join(reasons),
        )
        for i, reasons in sorted(edits.items())
        if reasons
    ]
    counts = {"records": len(rows), "volumes": len(published), "files": len(file_hashes), "problems": len(problems)}
    recorded = read_lineage_digest(store)
    return AuditReport(
        store=str(store),
        counts=counts,
        table_digest=digest,
        recorded_digest=recorded.get("table_digest") if recorded else None,
        problems=problems,
    )


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
