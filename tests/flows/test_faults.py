"""Reliability under faults: SIGKILL during preprocessing, training and sampling, then rerun.

Each step runs as a real `gem3d` process that is killed once it has made visible progress; the rerun
finishes the job and everything passes its contract with nothing lost, duplicated or half-written.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from data_contracts import synthetic_contract
from flows.cli import app
from flows.enhance import enhance_flow
from flows.preprocess import preprocess_flow
from flows.train import train_flow
from flows.validate import validate_store
from gem3d.checkpoints import load_model
from gem3d.io.phantoms import write_phantom_dataset
from gem3d.lineage import read_lineage_table
from gem3d.store import CASES, list_cases, staging_dir
from gem3d.synthetic_store import LINEAGE, list_synthetic, read_synthetic, synthetic_row
from tests.flows.conftest import MICRO_CONFIG

TIMEOUT = 240


def _gem3d(*args: str) -> subprocess.Popen:
    """A real `gem3d` process talking to this session's Prefect test API (no server start-up of its own)."""
    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    env.pop("MLFLOW_TRACKING_URI", None)  # set by mlflow in this process; the child tracks to its own workdir
    command = [sys.executable, "-c", "from flows.cli import app; app()", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(process: subprocess.Popen, ready) -> None:
    """SIGKILL the process as soon as `ready()` is true (fail if it finishes or times out first)."""
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the process ended (code {process.returncode}) before it could be killed mid-run")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no progress to interrupt within the timeout")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _config(tmp_path: Path, **sections) -> str:
    config = yaml.safe_load(Path(MICRO_CONFIG).read_text())
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_killed_preprocessing_leaves_no_half_written_case_and_a_rerun_finishes(prefect_harness, tmp_path):
    dataset = write_phantom_dataset(tmp_path / "phantoms", "brain", 16, seed=3, shape=(64, 64, 32))
    store = tmp_path / "store.zarr"
    config = _config(tmp_path)
    process = _gem3d(
        "preprocess", "--dataset", str(dataset), "--store", str(store), "--config", config, "--workers", "1"
    )
    _kill_when(process, lambda: (store / CASES).is_dir() and len(list_cases(store)) >= 1)
    for case in list_cases(store):
        group = zarr.open_group(store / CASES / case, mode="r")
        assert {"image", "label"} <= set(group.array_keys()) and "source_sha256" in group.attrs
    summary = preprocess_flow(str(dataset), str(store), config, None, str(tmp_path))
    assert summary["published"] == 16 and summary["skipped"] >= 1
    assert list_cases(store) == sorted(f"brain_{i:03d}" for i in range(16))
    assert all(result.passed for result in validate_store(str(store)))
    assert list(staging_dir(store).iterdir()) == []


def test_killed_training_resumes_from_its_last_checkpoint(micro_run, tmp_path):
    workdir, _ = micro_run
    shutil.copytree(workdir / "store.zarr", tmp_path / "store.zarr")
    config = _config(tmp_path, train={"stage1": {"steps": 60, "checkpoint_every": 2, "warmup_steps": 2}})
    checkpoints = tmp_path / "models" / "stage1" / "checkpoints"
    process = _gem3d("train", "--store", str(tmp_path / "store.zarr"), "--stage", "1", "--config", config)
    _kill_when(process, lambda: checkpoints.is_dir() and len(list(checkpoints.glob("step_*.pt"))) >= 1)
    killed_at = max(int(path.stem.split("_")[1]) for path in checkpoints.glob("step_*.pt"))
    assert killed_at < 60
    results = train_flow(str(tmp_path / "store.zarr"), config, "stage1", True, str(tmp_path))
    assert results["stage1"]["steps"] == 60
    model, meta = load_model(tmp_path / "models" / "stage1")
    assert meta["sha256"] == results["stage1"]["sha256"]
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.parameters())


def test_killed_sampling_resumes_with_nothing_lost_or_duplicated(micro_run, tmp_path):
    workdir, _ = micro_run
    config = _config(tmp_path, sampling={"volumes_per_batch": 1, "steps": 4})
    out = tmp_path / "synthetic.zarr"
    process = _gem3d(
        "enhance",
        "--store",
        str(workdir / "store.zarr"),
        "--out",
        str(out),
        "--setting",
        "ic",
        "--per-case",
        "3",
        "--config",
        config,
        "--workdir",
        str(workdir),
        "--workers",
        "1",
    )
    _kill_when(process, lambda: (out / CASES).is_dir() and len(list_synthetic(out)) >= 1)
    killed_with = len(list_synthetic(out))
    outcome = enhance_flow(str(workdir / "store.zarr"), str(out), "ic", 3, None, config, str(workdir))
    ids = list_synthetic(out)
    assert len(ids) == outcome["planned"] == 12 and len(set(ids)) == 12
    assert outcome["skipped"] >= killed_with >= 1
    records = read_lineage_table(out / LINEAGE)
    assert sorted(r.synthetic_id for r in records) == ids
    rows = [synthetic_row_from_store(out, synthetic_id) for synthetic_id in ids]
    assert synthetic_contract(pd.DataFrame(rows)).passed
    assert [path for path in staging_dir(out).iterdir() if path.is_dir()] == []


def synthetic_row_from_store(store: Path, synthetic_id: str) -> dict:
    """The synthetic contract's row for a published volume, recomputed from what is on disk."""
    from gem3d.synthesis import SynthesisPlan, SyntheticVolume
    from gem3d.synthetic_store import synthetic_attributes

    image, mask, record = read_synthetic(store, synthetic_id)
    plan = SynthesisPlan.model_validate(synthetic_attributes(store, synthetic_id)["plan"])
    return synthetic_row(SyntheticVolume(plan, image, mask, record))


def test_unwritable_output_is_a_clear_error_not_a_traceback(prefect_harness, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    dataset = write_phantom_dataset(tmp_path / "phantoms", "brain", 2, shape=(32, 32, 16))
    outcome = CliRunner().invoke(
        app, ["preprocess", "--dataset", str(dataset), "--store", str(blocker / "store.zarr"), "--config", MICRO_CONFIG]
    )
    assert outcome.exit_code == 2
    text = " ".join(outcome.output.split())
    assert "cannot write" in text and "Not a directory" in text
    assert "Traceback" not in outcome.output


def test_full_disk_is_a_clear_error_not_a_traceback(prefect_harness, tmp_path, monkeypatch):
    import errno

    import gem3d.store

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "store.zarr"))

    monkeypatch.setattr(gem3d.store, "stage_case", full_disk)
    monkeypatch.setattr("gem3d.ingest.stage_case", full_disk)
    dataset = write_phantom_dataset(tmp_path / "phantoms", "brain", 2, shape=(32, 32, 16))
    outcome = CliRunner().invoke(
        app,
        [
            "preprocess",
            "--dataset",
            str(dataset),
            "--store",
            str(tmp_path / "store.zarr"),
            "--config",
            MICRO_CONFIG,
            "--workers",
            "1",
        ],
    )
    assert outcome.exit_code == 2
    text = " ".join(outcome.output.split())
    assert "No space left on device" in text and "Traceback" not in text
