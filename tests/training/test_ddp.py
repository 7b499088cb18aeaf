"""DistributedDataParallel on CPU: two gloo processes train one stage and end with identical weights."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from gem3d.checkpoints import read_bundle_meta
from gem3d.config import Config
from gem3d.training import train_stage
from tests.training.conftest import tiny_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, config: Config, store: Path, out_dir: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    result = train_stage("stage1", config, store, out_dir / "models")
    summary = {"digest": result.weights_digest, "losses": result.losses, "sha256": result.sha256}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(summary))


def test_two_gloo_processes_finish_with_identical_weights(tmp_path: Path, small_store: Path) -> None:
    config = tiny_config({"stage1": {"steps": 4, "checkpoint_every": 2}})
    mp.spawn(_rank, args=(2, _free_port(), config, small_store, tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == 4
    assert ranks[0]["sha256"] == ranks[1]["sha256"] == read_bundle_meta(tmp_path / "models" / "stage1")["sha256"]
    checkpoints = sorted(path.name for path in (tmp_path / "models" / "stage1" / "checkpoints").glob("*.pt"))
    assert checkpoints == ["step_0000002.pt", "step_0000004.pt"]  # written once, by rank 0
