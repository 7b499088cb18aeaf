"""Training-state checkpoints: atomic writes, the latest few kept, sha256 recorded, `weights_only` loadable."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gem3d.errors import StoreError
from gem3d.lineage import sha256_file
from gem3d.store import write_json_atomic

CHECKPOINTS = "checkpoints"
CHECKPOINT_INDEX = "index.json"
KEEP_CHECKPOINTS = 2


def rng_state() -> dict:
    """Global RNG states as tensors, lists and numbers (loadable with `weights_only=True`)."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)],
        "python": [version, list(internal), gauss_next],
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class CheckpointDir:
    """Training-state checkpoints `step_%07d.pt`, written atomically, the latest few kept, sha256 in an index."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index_path = directory / CHECKPOINT_INDEX

    def entries(self) -> list[dict]:
        """Recorded checkpoints, oldest first: step, file name, sha256."""
        if not self.index_path.exists():
            return []
        return json.loads(self.index_path.read_text())["checkpoints"]

    def save(self, state: dict, step: int) -> tuple[Path, str]:
        """Write one checkpoint under a temporary name, rename it, record it; prune the oldest."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{step:07d}.pt"
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.directory)
        os.close(handle)
        try:
            torch.save(state, temporary)
            digest = sha256_file(temporary)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        entries = [entry for entry in self.entries() if entry["step"] != step]
        entries.append({"step": step, "file": path.name, "sha256": digest})
        write_json_atomic(self.index_path, {"checkpoints": entries[-KEEP_CHECKPOINTS:]})
        for entry in entries[:-KEEP_CHECKPOINTS]:
            (self.directory / entry["file"]).unlink(missing_ok=True)
        return path, digest

    def latest(self) -> tuple[Path, str, dict] | None:
        """The newest recorded checkpoint, after checking its sha256; None when there is none."""
        entries = self.entries()
        if not entries:
            return None
        entry = entries[-1]
        path = self.directory / entry["file"]
        if not path.exists() or sha256_file(path) != entry["sha256"]:
            raise StoreError(path, "checkpoint is missing or changed since it was written (sha256 mismatch)")
        return path, entry["sha256"], torch.load(path, map_location="cpu", weights_only=True)

    def clear(self) -> None:
        """Remove every checkpoint (a fresh run must not resume from an older one)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def weights_digest(module: nn.Module) -> str:
    """sha256 over a module's tensor names and bytes: equal exactly when the weights are."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
