"""Content hashes, derived ids, lineage records and their table, the audit and the printed chain."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from gem3d.errors import MissingFileError
from gem3d.lineage import (
    CHAIN_COLUMN,
    REQUIRED_FIELDS,
    CheckpointRef,
    InformedSliceRef,
    LineageRecord,
    SourceFile,
    audit_records,
    broken_links,
    changed_fields,
    code_version,
    derive_id,
    format_chain,
    missing_fields,
    read_lineage_rows,
    read_lineage_table,
    sha256_array,
    sha256_file,
    table_digest,
    write_lineage_table,
)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "image": _write(tmp_path / "case_001_0000.nii.gz", b"image bytes " * 100),
        "label": _write(tmp_path / "case_001.nii.gz", b"label bytes " * 50),
        "denoiser": _write(tmp_path / "denoiser.safetensors", bytes(range(256)) * 40),
    }


def _record(files: dict[str, Path], synthetic_id: str = "syn-0000000000000001", seed: int = 0) -> LineageRecord:
    return LineageRecord(
        synthetic_id=synthetic_id,
        source_case_id="case_001",
        source_mask_sha256="ab" * 32,
        source_files=[
            SourceFile(path=str(files["image"]), sha256=sha256_file(files["image"]), role="image"),
            SourceFile(path=str(files["label"]), sha256=sha256_file(files["label"]), role="label"),
        ],
        mask_edits=[{"kind": "flip", "params": {"probability": 0.5}, "sampled": {"flipped": True}}],
        informed_slice=InformedSliceRef(mode="chosen", case_id="case_001", slice_index=0, sha256="cd" * 32),
        start_slice=0,
        sampler={"name": "ddim", "steps": 200, "eta": 1.0, "setting": "icma"},
        checkpoints=[
            CheckpointRef(
                role="denoiser",
                path=str(files["denoiser"]),
                sha256=sha256_file(files["denoiser"]),
                mlflow_run_id="run-1",
                model_version="3",
            )
        ],
        config_hash="0123456789abcdef",
        package_version="0.1.0",
        git_commit="f" * 40,
        seed=seed,
    )


def test_sha256_file_matches_hashlib_whatever_the_chunk(files):
    expected = hashlib.sha256(files["denoiser"].read_bytes()).hexdigest()
    assert sha256_file(files["denoiser"]) == expected
    assert sha256_file(files["denoiser"], chunk=7) == expected


def test_sha256_array_depends_on_dtype_shape_and_bytes():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert sha256_array(array) == sha256_array(array.copy())
    assert sha256_array(array) != sha256_array(array.reshape(4, 3, 2))
    assert sha256_array(array) != sha256_array(array.view(np.int8))
    changed = array.copy()
    changed[1, 2, 3] += 1
    assert sha256_array(array) != sha256_array(changed)
    assert sha256_array(np.asfortranarray(array)) == sha256_array(array)


def test_derive_id_is_stable_and_sensitive_to_every_input():
    inputs = {"case": "case_001", "seed": 3, "edits": ["rotate:2.5", "flip"], "setting": "icma"}
    synthetic_id = derive_id("syn", **inputs)
    assert re.fullmatch(r"syn-[0-9a-f]{16}", synthetic_id)
    assert derive_id("syn", **dict(reversed(inputs.items()))) == synthetic_id
    assert derive_id("syn", **{**inputs, "seed": np.int64(3)}) == synthetic_id
    for name, value in [("case", "case_002"), ("seed", 4), ("edits", ["flip", "rotate:2.5"]), ("setting", "ic")]:
        assert derive_id("syn", **{**inputs, name: value}) != synthetic_id
    assert derive_id("gen", **inputs) != synthetic_id
    with pytest.raises(TypeError):
        derive_id("syn", array=np.zeros(3))


def test_code_version_reports_version_and_commit():
    version = code_version()
    assert version["package_version"] == "0.1.0"
    assert version["git_commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", version["git_commit"])
    assert version["dirty"] in (True, False, None)
    version["git_commit"] = "tampered"
    assert code_version()["git_commit"] != "tampered"


def test_lineage_table_round_trips(files, tmp_path):
    records = [_record(files), _record(files, "syn-0000000000000002", seed=9)]
    records[1].flow_run_id = "flow-7"
    records[1].informed_slice = InformedSliceRef(mode="generated", generator_checkpoint_sha256="ee" * 32, seed=5)
    table = tmp_path / "out" / "lineage.parquet"
    write_lineage_table(records, table)
    assert read_lineage_table(table) == records
    assert [path.name for path in table.parent.iterdir()] == ["lineage.parquet"]


def test_lineage_table_upserts_by_synthetic_id(files, tmp_path):
    table = tmp_path / "lineage.parquet"
    first, second, third = (_record(files, f"syn-{index:016x}") for index in range(3))
    write_lineage_table([first, second], table)
    second_again = second.model_copy(update={"seed": 42})
    write_lineage_table([second_again, third], table)
    read = read_lineage_table(table)
    assert [record.synthetic_id for record in read] == [first.synthetic_id, second.synthetic_id, third.synthetic_id]
    assert read[1].seed == 42


def test_table_rows_are_chained_in_synthetic_id_order_and_end_with_the_table_digest(files, tmp_path):
    table = tmp_path / "lineage.parquet"
    records = [_record(files, f"syn-{index:016x}", seed=index) for index in (2, 0, 1)]
    digest = write_lineage_table(records, table)
    rows = read_lineage_rows(table)
    assert [row["synthetic_id"] for row in rows] == sorted(record.synthetic_id for record in records)
    assert rows[-1][CHAIN_COLUMN] == digest == table_digest(rows)
    assert broken_links(rows) == []
    assert write_lineage_table(list(reversed(records)), tmp_path / "again.parquet") == digest


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", 99), ("created_at", "2020-01-01T00:00:00+00:00"), ("sampler", '{"steps": 1}'), ("git_dirty", True)],
)
def test_any_edited_field_breaks_exactly_its_rows_link_and_the_table_digest(files, tmp_path, field, value):
    table = tmp_path / "lineage.parquet"
    digest = write_lineage_table([_record(files, f"syn-{index:016x}", seed=index) for index in range(3)], table)
    rows = read_lineage_rows(table)
    rows[1][field] = value
    assert broken_links(rows) == [rows[1]["synthetic_id"]]
    assert table_digest(rows) != digest


def test_a_removed_row_breaks_the_link_of_the_row_after_it(files, tmp_path):
    table = tmp_path / "lineage.parquet"
    digest = write_lineage_table([_record(files, f"syn-{index:016x}") for index in range(3)], table)
    rows = read_lineage_rows(table)
    assert broken_links([rows[0], rows[2]]) == [rows[2]["synthetic_id"]]
    assert table_digest(rows[:2]) != digest


def test_changed_fields_names_the_leaves_that_differ():
    before = {"seed": 1, "sampler": {"steps": 3, "eta": 1.0}, "checkpoints": [{"sha256": "a"}], "flow_run_id": None}
    after = {"seed": 1, "sampler": {"steps": 4, "eta": 1.0}, "checkpoints": [{"sha256": "b"}], "extra": 0}
    assert changed_fields(before, after) == ["checkpoints[0].sha256", "extra", "flow_run_id", "sampler.steps"]
    assert changed_fields(before, before) == []
    assert changed_fields({"seed": 1}, {"seed": True}) == ["seed"]


def test_reading_a_missing_table_names_the_file(tmp_path):
    with pytest.raises(MissingFileError, match="lineage.parquet"):
        read_lineage_table(tmp_path / "lineage.parquet")


def test_missing_fields_catches_blank_fields(files):
    complete = _record(files)
    assert missing_fields(complete) == []
    assert missing_fields(complete.model_copy(update={"mask_edits": [], "flow_run_id": None})) == []
    assert "source_mask_sha256" in missing_fields(complete.model_copy(update={"source_mask_sha256": ""}))
    assert "checkpoints" in missing_fields(complete.model_copy(update={"checkpoints": []}))
    assert "start_slice" in missing_fields(complete.model_copy(update={"start_slice": None}))
    blank_checkpoint = complete.checkpoints[0].model_copy(update={"sha256": ""})
    assert missing_fields(complete.model_copy(update={"checkpoints": [blank_checkpoint]})) == ["checkpoints[0].sha256"]
    generated = InformedSliceRef(mode="generated", generator_checkpoint_sha256="ee" * 32)
    assert missing_fields(complete.model_copy(update={"informed_slice": generated})) == ["informed_slice.seed"]
    bare = LineageRecord(synthetic_id="syn-x")
    assert set(missing_fields(bare)) == set(REQUIRED_FIELDS) - {"synthetic_id", "created_at"}


def test_audit_is_clean_for_untouched_files(files):
    assert audit_records([_record(files), _record(files, "syn-2")]) == []


def _flip_one_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("role", ["image", "denoiser"])
def test_audit_catches_one_flipped_byte(files, role):
    record = _record(files)
    expected = sha256_file(files[role])
    _flip_one_byte(files[role])
    (problem,) = audit_records([record])
    assert (problem.synthetic_id, problem.path, problem.kind) == (record.synthetic_id, str(files[role]), "changed_file")
    assert problem.expected == expected and problem.actual == sha256_file(files[role])


def test_audit_catches_a_deleted_file_in_every_record(files):
    records = [_record(files), _record(files, "syn-2")]
    files["label"].unlink()
    problems = audit_records(records)
    assert [(p.synthetic_id, p.kind, p.actual) for p in problems] == [
        (records[0].synthetic_id, "missing_file", None),
        ("syn-2", "missing_file", None),
    ]


def test_format_chain_leads_back_to_the_real_files(files):
    record = _record(files)
    chain = format_chain(record)
    assert chain.splitlines()[0].startswith(record.synthetic_id)
    for text in [str(files["image"]), str(files["label"]), str(files["denoiser"]), "case_001", "run-1", "flipped=True"]:
        assert text in chain
    assert chain.index("checkpoints") < chain.index("real files")
