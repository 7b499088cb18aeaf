"""Content hashes, lineage records, ids derived from inputs, and an audit that re-hashes referenced files.

A synthetic volume's `LineageRecord` leads back to the real files, the mask edits, the informed slice and
the checkpoints that made it; the lineage table (parquet) holds one row per synthetic id.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

import gem3d
from gem3d.config import Config, config_hash
from gem3d.errors import MissingFileError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_array(array: np.ndarray) -> str:
    """Hex sha256 of an array's dtype, shape and bytes: equal bytes with another dtype or shape differ."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot derive an id from a {type(value).__name__}: {value!r}")


def derive_id(prefix: str, **inputs: Any) -> str:
    """A stable id `<prefix>-<16 hex>` from the canonical JSON of `inputs`: same inputs, same id."""
    if not prefix or any(char.isspace() for char in prefix):
        raise ValueError(f"id prefix must be a non-empty word, got {prefix!r}")
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=_canonical)
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(gem3d.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@lru_cache(maxsize=1)
def _code_version() -> tuple[str, str, bool | None]:
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return gem3d.__version__, "unknown", None
    status = _git("status", "--porcelain")
    return gem3d.__version__, commit, None if status is None else bool(status)


def code_version() -> dict[str, Any]:
    """{"package_version", "git_commit" ("unknown" outside a git checkout), "dirty" (None when unknown)}."""
    package_version, git_commit, dirty = _code_version()
    return {"package_version": package_version, "git_commit": git_commit, "dirty": dirty}


def provenance(config: Config) -> dict[str, Any]:
    """What every artefact names besides its inputs: the config hash, the seed and the code version."""
    version = code_version()
    return {
        "config_hash": config_hash(config),
        "seed": config.seed,
        "package_version": version["package_version"],
        "git_commit": version["git_commit"],
        "git_dirty": version["dirty"],
    }


class _Ref(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceFile(_Ref):
    """A real file the synthetic volume depends on; role e.g. "image", "label", "informed_source"."""

    path: str
    sha256: str
    role: str


class CheckpointRef(_Ref):
    """A model checkpoint used in sampling, with its MLflow run and registered version when known."""

    role: str
    path: str
    sha256: str
    mlflow_run_id: str | None = None
    model_version: str | None = None


class InformedSliceRef(_Ref):
    """Where the informed slice came from.

    "chosen" and "fixed" (a reference slice for de-enhancement) need case_id, slice_index and sha256 (of the
    slice array; its file is listed in `source_files`); "generated" needs the generator checkpoint's sha256
    and the seed (sha256 of the generated slice is recorded when available).
    """

    mode: Literal["chosen", "generated", "fixed"]
    case_id: str | None = None
    slice_index: int | None = None
    sha256: str | None = None
    generator_checkpoint_sha256: str | None = None
    seed: int | None = None


_INFORMED_REQUIRED = {
    "chosen": ("case_id", "slice_index", "sha256"),
    "fixed": ("case_id", "slice_index", "sha256"),
    "generated": ("generator_checkpoint_sha256", "seed"),
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class LineageRecord(BaseModel):
    """Everything needed to trace (and re-make) one synthetic volume; check completeness with
    `missing_fields`. `flow_run_id` is None outside Prefect; `git_dirty` is None when unknown."""

    model_config = ConfigDict(extra="forbid")

    synthetic_id: str = Field(min_length=1)
    source_case_id: str | None = None
    source_mask_sha256: str | None = None
    source_files: list[SourceFile] = []
    mask_edits: list[dict[str, Any]] = []
    informed_slice: InformedSliceRef | None = None
    start_slice: int | None = None
    sampler: dict[str, Any] = {}
    checkpoints: list[CheckpointRef] = []
    config_hash: str | None = None
    package_version: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    seed: int | None = None
    created_at: str = Field(default_factory=_now)
    flow_run_id: str | None = None

    def source_case_ids(self) -> set[str]:
        """Every real case the volume derives from: mask source, informed-slice source and lesion-paste sources."""
        cases = {self.source_case_id} if self.source_case_id else set()
        if self.informed_slice is not None and self.informed_slice.case_id:
            cases.add(self.informed_slice.case_id)
        cases.update(
            edit["params"]["source_case_id"] for edit in self.mask_edits if edit.get("params", {}).get("source_case_id")
        )
        return cases


REQUIRED_FIELDS: tuple[str, ...] = (
    "synthetic_id",
    "source_case_id",
    "source_mask_sha256",
    "source_files",
    "informed_slice",
    "start_slice",
    "sampler",
    "checkpoints",
    "config_hash",
    "package_version",
    "git_commit",
    "seed",
    "created_at",
)
"""Fields that must be present: None, "" and empty containers count as missing (0 does not).
`mask_edits` may be empty (no edits), `flow_run_id` and `git_dirty` may be None."""


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


def missing_fields(record: LineageRecord) -> list[str]:
    """Names of required fields that are blank, including nested ones such as "checkpoints[0].sha256".

    A baseline volume has no informed slice by design, so it does not miss one.
    """
    baseline = any(checkpoint.role == "baseline" for checkpoint in record.checkpoints)
    required = [name for name in REQUIRED_FIELDS if not (baseline and name == "informed_slice")]
    missing = [name for name in required if _blank(getattr(record, name))]
    for index, source in enumerate(record.source_files):
        missing += [f"source_files[{index}].{name}" for name in ("path", "sha256", "role") if not getattr(source, name)]
    for index, checkpoint in enumerate(record.checkpoints):
        missing += [
            f"checkpoints[{index}].{name}" for name in ("role", "path", "sha256") if not getattr(checkpoint, name)
        ]
    if record.informed_slice is not None:
        needed = _INFORMED_REQUIRED[record.informed_slice.mode]
        missing += [f"informed_slice.{name}" for name in needed if _blank(getattr(record.informed_slice, name))]
    return missing


_NESTED = ("source_files", "mask_edits", "informed_slice", "sampler", "checkpoints")
_COLUMN_TYPES = {"start_slice": pa.int64(), "seed": pa.int64(), "git_dirty": pa.bool_()}
_SCHEMA = pa.schema([(name, _COLUMN_TYPES.get(name, pa.string())) for name in LineageRecord.model_fields])


def _to_row(record: LineageRecord) -> dict[str, Any]:
    row = record.model_dump(mode="json")
    return {name: json.dumps(row[name], sort_keys=True) if name in _NESTED else row[name] for name in row}


def _from_row(row: dict[str, Any]) -> LineageRecord:
    return LineageRecord.model_validate(
        {name: json.loads(value) if name in _NESTED else value for name, value in row.items()}
    )


def read_lineage_table(path: str | Path) -> list[LineageRecord]:
    """All records of a lineage table, in table order."""
    if not Path(path).exists():
        raise MissingFileError(path, "lineage table not found")
    return [_from_row(row) for row in pq.read_table(path).to_pylist()]


def write_lineage_table(records: list[LineageRecord], path: str | Path) -> None:
    """Upsert `records` by synthetic_id into the parquet table at `path` (created if absent), atomically.

    Nested fields are stored as JSON strings. One writer at a time: the read-modify-write is not locked.
    """
    path = Path(path)
    merged = {record.synthetic_id: record for record in (read_lineage_table(path) if path.exists() else [])}
    merged.update({record.synthetic_id: record for record in records})
    table = pa.Table.from_pylist([_to_row(record) for record in merged.values()], schema=_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class AuditProblem(BaseModel):
    """A referenced file that is gone ("missing") or whose content no longer matches ("changed")."""

    model_config = ConfigDict(frozen=True)

    synthetic_id: str
    path: str
    problem: Literal["missing", "changed"]
    expected: str
    actual: str | None


def audit_records(records: list[LineageRecord]) -> list[AuditProblem]:
    """Re-hash every source file and checkpoint the records reference (each path once) and report drift."""
    hashes: dict[str, str | None] = {}
    problems = []
    for record in records:
        for reference in [*record.source_files, *record.checkpoints]:
            if reference.path not in hashes:
                present = Path(reference.path).is_file()
                hashes[reference.path] = sha256_file(reference.path) if present else None
            actual = hashes[reference.path]
            if actual != reference.sha256:
                problems.append(
                    AuditProblem(
                        synthetic_id=record.synthetic_id,
                        path=reference.path,
                        problem="missing" if actual is None else "changed",
                        expected=reference.sha256,
                        actual=actual,
                    )
                )
    return problems


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "?"


def _edit_text(edit: dict[str, Any]) -> str:
    values = ", ".join(f"{name}={value}" for name, value in {**edit["params"], **edit["sampled"]}.items())
    return f"{edit['kind']}({values})"


def _informed_text(informed: InformedSliceRef | None) -> str:
    if informed is None:
        return "?"
    digest = _short(informed.sha256)
    if informed.mode == "generated":
        generator = _short(informed.generator_checkpoint_sha256)
        return f"generated by checkpoint {generator} with seed {informed.seed} (slice sha256 {digest})"
    return f"{informed.mode}: case {informed.case_id} slice {informed.slice_index} (sha256 {digest})"


def format_chain(record: LineageRecord) -> str:
    """A readable chain from the synthetic volume back to the real files (shown by `gem3d lineage ID`)."""
    dirty = {True: ", dirty tree", False: "", None: ""}[record.git_dirty]
    sampler = ", ".join(f"{name} {value}" for name, value in record.sampler.items()) or "?"
    lines = [
        f"{record.synthetic_id}  created {record.created_at}  flow run {record.flow_run_id or '-'}",
        f"  code gem3d {record.package_version} @ {record.git_commit}{dirty}; config {record.config_hash}",
        f"  <- sampler {sampler}; start slice {record.start_slice}; seed {record.seed}",
        f"  <- informed slice {_informed_text(record.informed_slice)}",
        f"  <- mask of case {record.source_case_id} (sha256 {_short(record.source_mask_sha256)})",
    ]
    lines += [f"       edit {_edit_text(edit)}" for edit in record.mask_edits] or ["       no edits"]
    lines.append("  <- checkpoints")
    lines += [
        f"       {ref.role}: {ref.path} (sha256 {_short(ref.sha256)}, mlflow run {ref.mlflow_run_id or '-'}, "
        f"version {ref.model_version or '-'})"
        for ref in record.checkpoints
    ]
    lines.append("  <- real files")
    lines += [f"       {ref.role}: {ref.path} (sha256 {_short(ref.sha256)})" for ref in record.source_files]
    return "\n".join(lines)
