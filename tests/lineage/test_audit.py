"""`gem3d audit SYNTH` proves a synthetic store: voxels, records in table and attributes, table digest, files."""

from __future__ import annotations

import json
import shutil
import threading
from io import StringIO
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from rich.console import Console
from typer.testing import CliRunner

import flows.cli as cli
import gem3d.lineage as lineage
from flows.cli import app
from gem3d.lineage import (
    read_lineage_rows,
    read_lineage_table,
    write_lineage_table,
)
from gem3d.store import CASES
from gem3d.synthetic_store import (
    LINEAGE,
    audit_synthetic_store,
    read_lineage_digest,
    rebuild_lineage_table,
    write_synthetic,
)
from tests.builders import recorded_synthetic_volume

runner = CliRunner()


def _shared_files(root: Path) -> dict[str, Path]:
    """Two real source files and one checkpoint that every volume of the store names."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "image": root / "case_0_0000.nii.gz",
        "label": root / "case_0.nii.gz",
        "stage2": root / "model.safetensors",
    }
    for index, path in enumerate(files.values()):
        path.write_bytes(bytes([index]) * 4096 + b"tail")
    return files


def _store(root: Path, count: int = 3) -> tuple[Path, list[str], dict[str, Path]]:
    """A published store of `count` volumes with its lineage table rebuilt, as a flow leaves it."""
    files = _shared_files(root / "real")
    synthetic = root / "synthetic.zarr"
    ids = write_synthetic(
        synthetic, [recorded_synthetic_volume(index, files) for index in range(count)], flow_run_id="run-1"
    )
    rebuild_lineage_table(synthetic)
    return synthetic, sorted(ids), files


def _audit(synthetic: Path, *options: str) -> tuple[int, dict]:
    outcome = runner.invoke(app, ["audit", str(synthetic), "--json", *options])
    return outcome.exit_code, json.loads(outcome.output)


def _kinds(report: dict) -> set[tuple[str, str | None]]:
    return {(problem["kind"], problem["synthetic_id"]) for problem in report["problems"]}


def _rewrite_row(synthetic: Path, synthetic_id: str, **fields) -> None:
    """Edit fields of one row of the parquet table in place, as someone with write access could."""
    rows = read_lineage_rows(synthetic / LINEAGE)
    for row in rows:
        if row["synthetic_id"] == synthetic_id:
            row.update(fields)
    table = pq.read_table(synthetic / LINEAGE)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), synthetic / LINEAGE)


def test_an_untouched_store_passes_with_counts(tmp_path):
    synthetic, ids, _ = _store(tmp_path)
    code, report = _audit(synthetic)
    assert code == 0 and report["passed"] is True and report["problems"] == []
    assert report["counts"] == {"records": len(ids), "volumes": len(ids), "files": 3, "problems": 0}
    assert report["table_digest"] == read_lineage_digest(synthetic)["table_digest"]


@pytest.mark.parametrize("array", ["image", "label"])
def test_one_edited_voxel_fails_the_audit(tmp_path, array):
    synthetic, ids, _ = _store(tmp_path)
    voxels = zarr.open_array(synthetic / CASES / ids[1] / array, mode="r+")
    voxels[0, 0, 0] = voxels[0, 0, 0] + 1 if array == "label" else voxels[0, 0, 0] + 0.25
    code, report = _audit(synthetic)
    assert code == 1 and report["passed"] is False
    (problem,) = report["problems"]
    assert (problem["kind"], problem["synthetic_id"]) == ("changed_volume", ids[1])
    assert problem["path"].endswith(f"{ids[1]}/{array}") and "voxels changed" in problem["reason"]


def test_a_recorded_volume_that_is_gone_fails_the_audit(tmp_path):
    synthetic, ids, _ = _store(tmp_path)
    shutil.rmtree(synthetic / CASES / ids[0])
    code, report = _audit(synthetic)
    assert code == 1 and _kinds(report) == {("missing_volume", ids[0])}


def test_a_volume_the_table_does_not_record_fails_the_audit(tmp_path):
    synthetic, ids, files = _store(tmp_path)
    (extra,) = write_synthetic(synthetic, [recorded_synthetic_volume(7, files)])
    code, report = _audit(synthetic)
    assert code == 1 and _kinds(report) == {("unrecorded_volume", extra)}


def test_a_field_edited_in_the_table_is_detected_and_named(tmp_path):
    synthetic, ids, _ = _store(tmp_path)
    _rewrite_row(synthetic, ids[2], seed=99)
    code, report = _audit(synthetic)
    assert code == 1
    edited = [problem for problem in report["problems"] if problem["kind"] == "edited_record"]
    assert [problem["synthetic_id"] for problem in edited] == [ids[2]]
    assert "seed" in edited[0]["reason"] and "chain" in edited[0]["reason"]
    assert ("edited_table", None) in _kinds(report)


def test_a_table_rechained_after_an_edit_no_longer_matches_its_recorded_digest(tmp_path):
    synthetic, ids, _ = _store(tmp_path)
    rows = read_lineage_rows(synthetic / LINEAGE)
    records = read_lineage_table(synthetic / LINEAGE)
    records[0] = records[0].model_copy(update={"sampler": {**records[0].sampler, "steps": 200}})
    digests = {row["synthetic_id"]: json.loads(row["attribute_digests"]) for row in rows}
    write_lineage_table(records, synthetic / LINEAGE, digests)  # a consistent chain over the edited row
    code, report = _audit(synthetic)
    assert code == 1
    assert ("edited_table", None) in _kinds(report)
    (edited,) = [problem for problem in report["problems"] if problem["kind"] == "edited_record"]
    assert edited["synthetic_id"] == ids[0] and "sampler.steps" in edited["reason"]


@pytest.mark.parametrize(("attribute", "named"), [("lineage", "seed"), ("plan", "plan"), ("setting", "setting")])
def test_an_attribute_edited_in_the_volume_is_detected_and_named(tmp_path, attribute, named):
    synthetic, ids, _ = _store(tmp_path)
    group = zarr.open_group(synthetic / CASES / ids[1], mode="r+")
    value = dict(group.attrs)[attribute]
    group.attrs[attribute] = {**value, "seed": 1234} if isinstance(value, dict) else "ig"
    code, report = _audit(synthetic)
    assert code == 1 and _kinds(report) == {("edited_record", ids[1])}
    (problem,) = report["problems"]
    assert attribute in problem["reason"] and named in problem["reason"]


def test_an_attribute_edit_survives_a_table_rebuild_and_the_mlflow_digest_catches_the_table(tmp_path):
    synthetic, ids, _ = _store(tmp_path)
    published = read_lineage_digest(synthetic)["table_digest"]
    group = zarr.open_group(synthetic / CASES / ids[0], mode="r+")
    group.attrs["lineage"] = {**dict(group.attrs)["lineage"], "seed": 5}
    rebuild_lineage_table(synthetic)
    code, report = _audit(synthetic)
    assert code == 1 and _kinds(report) == {("edited_record", ids[0])}
    assert "lineage" in report["problems"][0]["reason"]
    code, report = _audit(synthetic, "--expected-digest", published)
    assert code == 1 and ("edited_table", None) in _kinds(report)


def test_a_changed_source_file_is_still_named(tmp_path):
    synthetic, ids, files = _store(tmp_path)
    files["label"].write_bytes(b"changed")
    code, report = _audit(synthetic)
    assert code == 1
    assert {(p["kind"], p["synthetic_id"], p["path"]) for p in report["problems"]} == {
        ("changed_file", synthetic_id, str(files["label"])) for synthetic_id in ids
    }


def test_a_volume_published_without_hashes_cannot_pass(tmp_path):
    synthetic, ids, _ = _store(tmp_path)
    _rewrite_row(synthetic, ids[0], image_sha256=None)
    rebuild = read_lineage_table(synthetic / LINEAGE)
    write_lineage_table(rebuild, synthetic / LINEAGE)  # no attribute digests, no volume hash: an old table
    code, report = _audit(synthetic)
    assert code == 1 and ("unverifiable", ids[0]) in _kinds(report)


def test_shared_files_are_hashed_once_each_and_in_parallel(tmp_path, monkeypatch):
    synthetic, ids, files = _store(tmp_path, count=6)
    both_running = threading.Barrier(2, timeout=10)  # broken unless two files are hashed at the same time
    hashed: list[str] = []
    real_sha256_file = lineage.sha256_file

    def hashing(path, *args):
        hashed.append(str(path))
        if str(path) != str(files["stage2"]):
            both_running.wait()
        return real_sha256_file(path, *args)

    monkeypatch.setattr(lineage, "sha256_file", hashing)
    progress: list[tuple[int, int]] = []
    report = audit_synthetic_store(synthetic, workers=4, on_progress=lambda done, total: progress.append((done, total)))
    assert report.passed, report.problems
    assert sorted(hashed) == sorted(str(path) for path in files.values())
    assert progress[-1] == (len(files) + len(ids), len(files) + len(ids))


def test_a_terminal_gets_a_progress_bar_and_a_pipe_does_not(tmp_path, monkeypatch):
    synthetic, _, _ = _store(tmp_path)
    plain = runner.invoke(app, ["audit", str(synthetic)])
    assert plain.exit_code == 0 and "audit passed" in plain.output and "hashing" not in plain.output
    screen = StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, force_terminal=True, width=120))
    assert runner.invoke(app, ["audit", str(synthetic)]).exit_code == 0
    assert "hashing volumes and files" in screen.getvalue()


def test_the_published_digest_is_logged_to_mlflow(tmp_path):
    from tasks.synthesis import log_lineage_digest

    synthetic, _, _ = _store(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("audit-digest")  # not an experiment id remembered from another store
    with mlflow.start_run() as run:
        logged = log_lineage_digest(synthetic)
    params = mlflow.get_run(run.info.run_id).data.params
    assert logged == params["lineage_digest"] == read_lineage_digest(synthetic)["table_digest"]
    assert _audit(synthetic, "--expected-digest", params["lineage_digest"])[0] == 0
