"""A fresh machine: the installed `gem3d` runs with an empty home directory and writes only where it says.

Prefect opens its local API database under PREFECT_HOME and creates that folder without its parents, so the
default must be a folder that exists; the gem3d cache folder is created with its parents, or falls back to
a private temporary folder, and every tool folder a user set is left alone.
"""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from gem3d.checkpoints import read_bundle_meta
from gem3d.store import list_cases, read_manifest
from gem3d.synthetic_store import LINEAGE, list_synthetic, read_synthetic
from tasks.environment import CACHE_FOLDERS, apply_offline_defaults, cache_dir
from tests.flows.conftest import MICRO_CONFIG

REPOSITORY = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 1200
STAGES = ("stage1", "stage2", "slicegen", "baseline")
TOOL_STATE_PREFIXES = ("PREFECT_", "MLFLOW_", "GX_", "XDG_", "GEM3D_", "DASK_")
LOCAL_CACHES = {".pytest_cache", ".ruff_cache", "__pycache__"}


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder` (a real probe: root ignores permission bits)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.fixture
def bare_environment(monkeypatch, tmp_path):
    """No tool folder or cache variable set, and a private temporary folder; restored after the test."""
    for name in (*CACHE_FOLDERS, "GEM3D_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    return temporary


def test_a_missing_home_gets_its_cache_and_prefect_home_created_with_parents(bare_environment, monkeypatch, tmp_path):
    home = tmp_path / "not" / "yet" / "home"
    monkeypatch.setenv("HOME", str(home))
    apply_offline_defaults()
    assert cache_dir() == home / ".cache" / "gem3d"
    for name, folder in CACHE_FOLDERS.items():
        assert Path(os.environ[name]) == home / ".cache" / "gem3d" / folder
        assert Path(os.environ[name]).is_dir() and _writable(Path(os.environ[name]))


def test_an_unwritable_home_falls_back_to_one_private_temporary_cache(bare_environment, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HOME", str(blocker / "home"))
    apply_offline_defaults()
    prefect_home = Path(os.environ["PREFECT_HOME"])
    assert prefect_home.is_dir() and _writable(prefect_home)
    assert bare_environment in prefect_home.parents
    assert cache_dir() == prefect_home.parent, "a second process reuses the same fallback cache"
    assert (prefect_home.parent.stat().st_mode & 0o077) == 0, "the shared temporary folder holds a private cache"


def test_a_temporary_cache_others_could_write_to_is_not_used(bare_environment, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HOME", str(blocker / "home"))
    planted = bare_environment / f"gem3d-cache-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    chosen = cache_dir()
    assert chosen != planted and bare_environment in chosen.parents and _writable(chosen)


def test_the_cache_folder_follows_gem3d_cache_dir_then_xdg_cache_home(bare_environment, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "gem3d"
    monkeypatch.setenv("GEM3D_CACHE_DIR", str(tmp_path / "mine" / "cache"))
    assert cache_dir() == tmp_path / "mine" / "cache" and cache_dir().is_dir()
    assert not (tmp_path / "home").exists()


def test_folders_the_user_set_are_left_alone(bare_environment, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    chosen = {name: str(tmp_path / "user" / name) for name in CACHE_FOLDERS}
    for name, value in chosen.items():
        monkeypatch.setenv(name, value)
    apply_offline_defaults()
    assert {name: os.environ[name] for name in CACHE_FOLDERS} == chosen
    assert not (tmp_path / "home").exists(), "no cache folder is made when the user named every folder"


def _installed_gem3d() -> str:
    """The `gem3d` console script installed next to this interpreter (else the one on PATH)."""
    sibling = Path(sys.executable).with_name("gem3d")
    found = str(sibling) if sibling.exists() else shutil.which("gem3d")
    assert found, "the gem3d console script is not installed"
    return found


def _fresh_environment(home: Path, temporary: Path) -> dict[str, str]:
    """This environment without any Prefect, MLflow, GX, Dask or gem3d state, with a new home and temp folder."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(TOOL_STATE_PREFIXES) and name != "MPLCONFIGDIR"
    }
    return env | {"HOME": str(home), "TMPDIR": str(temporary)}


def _entries(folder: Path) -> set[str]:
    """Top-level names in `folder`, apart from test runners' and linters' own caches."""
    return {path.name for path in folder.iterdir()} - LOCAL_CACHES


def _outside(folder: Path, kept: Path) -> list[Path]:
    """Everything under `folder` (empty folders too) that is neither `kept`, inside it, nor one of its parents."""
    return sorted(
        path.relative_to(folder)
        for path in folder.rglob("*")
        if not (path == kept or path.is_relative_to(kept) or path in kept.parents)
    )


@pytest.mark.slow
def test_gem3d_run_on_a_fresh_machine_writes_only_its_work_folder_and_cache(tmp_path):
    home, temporary, cwd = tmp_path / "home", tmp_path / "tmp", tmp_path / "cwd"
    for folder in (home, temporary, cwd):
        folder.mkdir()
    before = {folder: _entries(folder) for folder in (REPOSITORY, REPOSITORY / "tests" / "data")}

    finished = subprocess.run(
        [_installed_gem3d(), "run", "--config", MICRO_CONFIG, "--workdir", "work"],
        cwd=cwd,
        env=_fresh_environment(home, temporary),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert finished.returncode == 0, f"gem3d run failed:\n{finished.stdout[-4000:]}\n{finished.stderr[-4000:]}"

    work = cwd / "work"
    manifest = read_manifest(work / "store.zarr")
    assert len(manifest) > 0 and set(manifest["case_id"]) == set(list_cases(work / "store.zarr"))
    for stage in STAGES:
        assert (work / "models" / stage / "model.safetensors").is_file()
        assert read_bundle_meta(work / "models" / stage)
    synthetic = list_synthetic(work / "synthetic.zarr")
    assert synthetic and (work / "synthetic.zarr" / LINEAGE).is_file()
    for synthetic_id in synthetic:
        image, label, record = read_synthetic(work / "synthetic.zarr", synthetic_id)
        assert image.shape == label.shape and np.isfinite(image).all()
        assert set(record.source_case_ids()) <= set(manifest["case_id"])
    assert "<html" in (work / "report" / "report.html").read_text().lower()
    with sqlite3.connect(work / "mlflow.db") as db:
        statuses = [status for (status,) in db.execute("select status from runs")]
    assert statuses and set(statuses) == {"FINISHED"}

    cache = home / ".cache" / "gem3d"
    assert (cache / "prefect" / "prefect.db").is_file(), "Prefect's local API database lives in the gem3d cache"
    assert _outside(home, cache) == [], "written into the home directory outside the gem3d cache"
    assert _entries(cwd) == {"work"}
    assert {folder: _entries(folder) for folder in before} == before, "the run wrote into the repository"
