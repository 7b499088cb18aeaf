"""A trained micro work folder for the service tests, built once per test session by a real process.

4 brain phantoms, preprocessed and trained (stage 1 and stage 2: what enhancement needs) with
tests/data/micro.yaml. Each test module asks for it and copies what it changes; the first asks builds it
under the session's base temporary folder, the others find it there.
"""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from gem3d.io.phantoms import write_phantom_dataset
from tests.flows.conftest import MICRO_CONFIG
from tests.services import run_command

PHANTOM_CASES = 4
BUILD_TIMEOUT = 300.0
BUILD = """
import sys
from flows.preprocess import run_preprocess
from flows.train import train_flow

dataset, work, config = sys.argv[1:]
run_preprocess(dataset, f"{work}/store.zarr", config, None, work, None, 1)
for stage in ("stage1", "stage2"):
    train_flow(f"{work}/store.zarr", config, stage, False, work)
"""


def phantoms(folder: Path) -> Path:
    """The 4 brain phantoms the work folder is built from (written once)."""
    if not (folder / "dataset.json").exists():
        write_phantom_dataset(folder, "brain", PHANTOM_CASES, 0)
    return folder


def micro_config(folder: Path, **sampling: object) -> str:
    """tests/data/micro.yaml with `sampling` fields changed, written into `folder`; its path."""
    config = yaml.safe_load(Path(MICRO_CONFIG).read_text())
    config["sampling"] |= sampling
    path = folder / "micro-sampling.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def trained_work_folder(base: Path, env: Mapping[str, str]) -> Path:
    """`base/micro-trained/work` with phantoms/, store.zarr and models/{stage1,stage2}; built by one process
    (preprocessing and training in one interpreter: one start-up) the first time, reused after."""
    root = base / "micro-trained"
    root.mkdir(exist_ok=True)
    work = root / "work"
    with open(root / "build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "built").exists():
            dataset = phantoms(work / "phantoms")
            command = [sys.executable, "-c", BUILD, str(dataset), str(work), MICRO_CONFIG]
            run_command(command, env, root, root / "build.log", BUILD_TIMEOUT)
            (root / "built").touch()
    return work
