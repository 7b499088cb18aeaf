"""Content hashes, lineage records, ids derived from inputs, a tamper-evident lineage table, and the audit.

A synthetic volume's `LineageRecord` leads back to the real files, the mask edits, the informed slice and
the checkpoints that made it, and holds the sha256 of the published image and mask. The lineage table
(parquet) holds one row per synthetic id, in synthetic-id order, chained: each row's `chain_sha256` covers
the row's canonical JSON and the previous row's digest, so the last one (the table digest) changes when any
recorded field of any row does. Each row also carries the digests of its volume's attributes taken at
publication (`attribute_digests`), which the audit compares with the volume itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, computed_field

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


def canonical_json(value: Any) -> str:
    """The one JSON text of a value (sorted keys, no spaces) that ids and digests are taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_canonical)


def content_sha256(value: Any) -> str:
    """Hex sha256 of a value's canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def derive_id(prefix: str, **inputs: Any) -> str:
    """A stable id `<prefix>-<16 hex>` from the canonical JSON of `inputs`: same inputs, same id."""
    if not prefix or any(char.isspace() for char in prefix):
        raise ValueError(f"id prefix must be a non-empty word, got {prefix!r}")
    return f"{prefix}-{content_sha256(inputs)[:16]}"


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


@functools.lru_cache(maxsize=1)
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
    `missing_fields`. `flow_run_id` (the flow run that sampled the volume) is None outside Prefect;
    `root_flow_run_id` is the outermost flow run above it (the pipeline run, or the flow run itself when it
    has no parent) and `deployment_id` the deployment that started that root run (None outside a deployment),
    so a volume leads back to the scheduled run that made it. `git_dirty` is None when unknown.
    `image_sha256` and `mask_sha256` (`sha256_array` of the published arrays) are filled at publication."""

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
    root_flow_run_id: str | None = None
    deployment_id: str | None = None
    image_sha256: str | None = None
    mask_sha256: str | None = None

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
`mask_edits` may be empty (no edits); `flow_run_id`, `root_flow_run_id`, `deployment_id` and `git_dirty` may be
None. The volume hashes are filled at publication, after the contract that checks completeness; the audit
requires them."""


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
DIGESTS_COLUMN = "attribute_digests"
"""Table column: the volume's attribute digests taken at publication (canonical JSON; null when unknown)."""
CHAIN_COLUMN = "chain_sha256"
"""Table column: sha256 over the previous row's chain digest and this row's canonical JSON."""
GENESIS = "0" * 64
"""The digest a chain starts from, and so the digest of an empty table."""
DIGESTS_ATTRIBUTE = "digests"
"""Volume attribute: the sha256 of each of the volume's other attributes, taken at publication."""
_COLUMN_TYPES = {"start_slice": pa.int64(), "seed": pa.int64(), "git_dirty": pa.bool_()}
_COLUMNS = (*LineageRecord.model_fields, DIGESTS_COLUMN, CHAIN_COLUMN)
_SCHEMA = pa.schema([(name, _COLUMN_TYPES.get(name, pa.string())) for name in _COLUMNS])
_ABSENT = object()


def attribute_digests(attributes: Mapping[str, Any]) -> dict[str, str]:
    """sha256 of each attribute of a published volume (its digests aside), so a later edit is named by key."""
    return {key: content_sha256(value) for key, value in attributes.items() if key != DIGESTS_ATTRIBUTE}


def changed_fields(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted names of the JSON leaves that differ, e.g. "seed", "sampler.steps", "checkpoints[0].sha256"."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            name
            for key in sorted(set(before) | set(after))
            for name in changed_fields(before.get(key, _ABSENT), after.get(key, _ABSENT), f"{prefix}.{key}".lstrip("."))
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        pairs = enumerate(zip(before, after, strict=True))
        return [name for index, pair in pairs for name in changed_fields(*pair, f"{prefix}[{index}]")]
    return [] if type(before) is type(after) and before == after else [prefix or "(whole value)"]


def _to_row(record: LineageRecord, digests: Mapping[str, str] | None = None) -> dict[str, Any]:
    row = record.model_dump(mode="json")
    fields = {name: json.dumps(row[name], sort_keys=True) if name in _NESTED else row[name] for name in row}
    return {**fields, DIGESTS_COLUMN: None if digests is None else canonical_json(digests)}


def row_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """A table row's record fields as JSON values (nested ones parsed), unvalidated: what an edit left."""
    fields = {name: value for name, value in row.items() if name in LineageRecord.model_fields}
    return {name: _parsed(value) if name in _NESTED else value for name, value in fields.items()}


def _parsed(text: str | None) -> Any:
    """A nested field's JSON text parsed; text that is no longer JSON is kept as it is (validation refuses it)."""
    try:
        return None if text is None else json.loads(text)
    except json.JSONDecodeError:
        return text


def row_record(row: Mapping[str, Any]) -> LineageRecord:
    """The lineage record a table row holds (digest columns aside)."""
    return LineageRecord.model_validate(row_fields(row))


def row_attribute_digests(row: Mapping[str, Any]) -> dict[str, str] | None:
    """The volume attribute digests a table row recorded at publication; None for a volume published without."""
    value = row.get(DIGESTS_COLUMN)
    return None if value is None else json.loads(value)


def chain_link(previous: str, row: Mapping[str, Any]) -> str:
    """A row's chain digest: sha256 over the previous row's digest and this row's canonical JSON."""
    body = canonical_json({name: value for name, value in row.items() if name != CHAIN_COLUMN})
    return hashlib.sha256(f"{previous}\n{body}".encode()).hexdigest()


def table_digest(rows: Iterable[Mapping[str, Any]]) -> str:
    """The chain recomputed over `rows` in their order: the digest an untouched table of these rows ends with."""
    digest = GENESIS
    for row in rows:
        digest = chain_link(digest, row)
    return digest


def broken_links(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Ids of rows whose stored chain digest does not cover their content and the stored digest before them.

    Each edited row is named on its own; a removed or reordered row breaks the link of the row after it.
    """
    broken, previous = [], GENESIS
    for row in rows:
        if row.get(CHAIN_COLUMN) != chain_link(previous, row):
            broken.append(row["synthetic_id"])
        previous = row.get(CHAIN_COLUMN) or ""
    return broken


def read_lineage_rows(path: str | Path) -> list[dict[str, Any]]:
    """The lineage table's rows as stored (nested fields as JSON text, digest columns included)."""
    if not Path(path).exists():
        raise MissingFileError(path, "lineage table not found")
    return pq.read_table(path).to_pylist()


def read_lineage_table(path: str | Path) -> list[LineageRecord]:
    """All records of a lineage table, in table order."""
    return [row_record(row) for row in read_lineage_rows(path)]


def write_lineage_table(
    records: list[LineageRecord], path: str | Path, digests: Mapping[str, Mapping[str, str] | None] | None = None
) -> str:
    """Upsert `records` by synthetic_id into the parquet table at `path` (created if absent), atomically.

    Rows are kept in synthetic-id order and the whole chain is recomputed; `digests` maps an id to its
    volume's attribute digests. Nested fields are stored as JSON strings. Returns the table digest (the
    last row's chain digest). One writer at a time: the read-modify-write is not locked.
    """
    path = Path(path)
    digests = digests or {}
    merged = {row["synthetic_id"]: row for row in (read_lineage_rows(path) if path.exists() else [])}
    merged.update({record.synthetic_id: _to_row(record, digests.get(record.synthetic_id)) for record in records})
    rows, previous = [], GENESIS
    for synthetic_id in sorted(merged):
        row = {name: merged[synthetic_id].get(name) for name in _SCHEMA.names if name != CHAIN_COLUMN}
        previous = chain_link(previous, row)
        rows.append({**row, CHAIN_COLUMN: previous})
    table = pa.Table.from_pylist(rows, schema=_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return previous


AuditKind = Literal[
    "missing_file",
    "changed_file",
    "missing_volume",
    "changed_volume",
    "unrecorded_volume",
    "edited_record",
    "edited_table",
    "missing_table",
    "unverifiable",
]


class AuditProblem(BaseModel):
    """One thing the audit could not prove: its kind, the volume and file concerned, and why.

    Kinds: a referenced source file or checkpoint gone or changed ("missing_file", "changed_file"); a recorded
    volume gone, a volume whose voxels changed, a volume the table does not record ("missing_volume",
    "changed_volume", "unrecorded_volume"); a record edited in the table or the volume's attributes
    ("edited_record"); a table that no longer matches its recorded digest ("edited_table"); no table
    ("missing_table"); nothing recorded to check against ("unverifiable", e.g. published before volume hashes).
    """

    model_config = ConfigDict(frozen=True)

    kind: AuditKind
    synthetic_id: str | None = None
    path: str | None = None
    reason: str
    expected: str | None = None
    actual: str | None = None


class AuditReport(BaseModel):
    """What `gem3d audit` found: counts, the table digest against the recorded one, and every problem."""

    store: str
    counts: dict[str, int]
    table_digest: str | None = None
    recorded_digest: str | None = None
    problems: list[AuditProblem] = []

    @computed_field
    @property
    def passed(self) -> bool:
        """Nothing missing, changed, edited, unrecorded or unverifiable."""
        return not self.problems


Key = TypeVar("Key", bound=Hashable)
Result = TypeVar("Result")


def run_in_threads(
    jobs: Mapping[Key, Callable[[], Result]],
    workers: int | None = None,
    on_done: Callable[[], None] | None = None,
) -> dict[Key, Result]:
    """Run each job once on a thread pool (hashlib and zarr's decompression release the GIL).

    `workers` None takes the pool's default; `on_done` is called in this thread after each job (progress).
    """
    results: dict[Key, Result] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(job): key for key, job in jobs.items()}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if on_done is not None:
                on_done()
    return results


def _sha256_if_present(path: str) -> str | None:
    try:
        return sha256_file(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def file_hash_jobs(records: Iterable[LineageRecord]) -> dict[str, Callable[[], str | None]]:
    """One hashing job per distinct source file and checkpoint the records reference (None when it is gone)."""
    paths = {reference.path for record in records for reference in [*record.source_files, *record.checkpoints]}
    return {path: functools.partial(_sha256_if_present, path) for path in sorted(paths)}


def file_problems(records: Iterable[LineageRecord], hashes: Mapping[str, str | None]) -> list[AuditProblem]:
    """Every reference whose file is gone or whose current sha256 (`hashes`, by path) differs from the record's."""
    problems = []
    for record in records:
        for reference in [*record.source_files, *record.checkpoints]:
            actual = hashes[reference.path]
            if actual == reference.sha256:
                continue
            state = "is missing" if actual is None else "changed since the volume was made"
            problems.append(
                AuditProblem(
                    kind="missing_file" if actual is None else "changed_file",
                    synthetic_id=record.synthetic_id,
                    path=reference.path,
                    reason=f"{reference.role} {state}",
                    expected=reference.sha256,
                    actual=actual,
                )
            )
    return problems


def audit_records(
    records: list[LineageRecord], workers: int | None = None, on_done: Callable[[], None] | None = None
) -> list[AuditProblem]:
    """Re-hash every source file and checkpoint the records reference (each path once, in parallel); report drift."""
    return file_problems(records, run_in_threads(file_hash_jobs(records), workers, on_done))


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
    lines.append(f"  volume image sha256 {_short(record.image_sha256)}, mask sha256 {_short(record.mask_sha256)}")
    lines.append("  <- checkpoints")
    lines += [
        f"       {ref.role}: {ref.path} (sha256 {_short(ref.sha256)}, mlflow run {ref.mlflow_run_id or '-'}, "
        f"version {ref.model_version or '-'})"
        for ref in record.checkpoints
    ]
    lines.append("  <- real files")
    lines += [f"       {ref.role}: {ref.path} (sha256 {_short(ref.sha256)})" for ref in record.source_files]
    return "\n".join(lines)
