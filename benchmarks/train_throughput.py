"""Training throughput: slices per second and peak memory, each against a baseline measured in the same run.

1. Tiny preset, stage 1 through `train_stage` on a temporary phantom store (data loading, EMA, checkpoints and
   validation included) versus optimiser steps of the same denoiser on random tensors already in memory: the
   ratio is what everything around the network costs.
2. Paper preset denoiser (GEM-3D stage 1: 12 input channels, one window of 16 latent slices), forward + backward
   on random tensors. On CUDA at the paper's 64x64 latents: fp32 versus bf16 autocast, eager versus
   torch.compile. On CPU at a reduced latent size (`--cpu-latent-size`), since the full size takes about a
   minute per step there.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gem3d.anatomy import anatomy_outline
from gem3d.config import Config, load_config
from gem3d.models.factory import build_denoiser, mask_channels, sample_channels
from gem3d.store import init_store, publish_case, stage_case, write_table_atomic
from gem3d.training import train_stage

NUM_CLASSES = 3


def phantom_store(root: Path, size: int, cases: int = 4, slices: int = 24) -> Path:
    """A store of disc phantoms with two labelled regions, all in the training split."""
    store = init_store(root, {"labels": {str(k): f"class {k}" for k in range(NUM_CLASSES + 1)}})
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    rng = np.random.default_rng(0)
    rows = []
    for index in range(cases):
        radius = 0.5 + 0.3 * np.sin(np.linspace(0, np.pi, slices))[:, None, None]
        body = xx**2 + yy**2 < radius**2
        label = (body * (1 + (yy > 0) + (xx > 0.3))).astype(np.uint8)
        image = np.where(body, 0.2 * label + 0.05 * rng.standard_normal(body.shape), -1.0).astype(np.float32)
        case_id = f"case_{index}"
        publish_case(store, case_id, stage_case(store, case_id, image, label, {}, outline=anatomy_outline(image)))
        rows.append({"case_id": case_id, "split": "train", "shape_z": slices})
    write_table_atomic(store / "manifest.parquet", pd.DataFrame(rows))
    return store


def random_window_step(
    config: Config, size: int, windows: int, device: torch.device
) -> tuple[torch.nn.Module, Callable]:
    """The stage-1 denoiser of `config` and a closure computing its loss on random windows of the right shape."""
    model = build_denoiser(config, NUM_CLASSES).to(device)
    length, channels = config.data.window_length, sample_channels(config)
    noisy = torch.randn(windows, length, channels, size, size, device=device)
    mask = torch.rand(windows, length, mask_channels(config, NUM_CLASSES), size, size, device=device)
    informed = torch.randn(windows, channels, size, size, device=device)
    timesteps = torch.randint(0, 1000, (windows, length), device=device)

    def loss(forward: Callable) -> torch.Tensor:
        return (forward(noisy, timesteps, mask, informed).float() - noisy).pow(2).mean()

    return model, loss


def time_steps(
    model: torch.nn.Module,
    loss: Callable,
    steps: int,
    warmup: int,
    device: torch.device,
    bf16: bool = False,
    compiled: bool = False,
    optimiser: bool = False,
) -> tuple[float, float]:
    """Seconds per step (after `warmup` steps) and peak memory in MiB of forward + backward (+ AdamW)."""
    forward = torch.compile(model) if compiled else model
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-5) if optimiser else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + steps):
        if step == warmup:
            _synchronise(device)
            began = time.perf_counter()
        with autocast:
            value = loss(forward)
        value.backward()
        if adamw is not None:
            adamw.step()
        model.zero_grad(set_to_none=True)
    _synchronise(device)
    seconds = (time.perf_counter() - began) / steps
    return seconds, _peak_memory_mb(device)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_stage1(steps: int, device: torch.device) -> None:
    """Stage 1 of the tiny preset through `train_stage`, against the same network on in-memory random tensors."""
    preset = load_config("tiny")
    settings = preset.train.stage1.model_copy(update={"steps": steps, "checkpoint_every": steps})
    train = preset.train.model_copy(update={"stage1": settings, "device": device.type})
    config = preset.model_copy(update={"train": train})
    with tempfile.TemporaryDirectory() as folder:
        store = phantom_store(Path(folder) / "store.zarr", config.data.in_plane_size)
        result = train_stage("stage1", config, store, Path(folder) / "models")
    windows, length = settings.batch_windows, config.data.window_length
    model, loss = random_window_step(config, config.data.in_plane_size, windows, device)
    seconds, _ = time_steps(model, loss, steps=steps, warmup=2, device=device, optimiser=True)
    network_only = windows * length / seconds
    size = config.data.in_plane_size
    print(f"tiny preset, stage 1, {windows} windows of {length} slices of {size}x{size}, {steps} steps, {device}")
    print(f"  train_stage (store, EMA, checkpoint): {result.slices_per_second:8.1f} slices/s")
    print(f"  network only (random tensors, AdamW): {network_only:8.1f} slices/s")
    print(f"  ratio train_stage / network only:     {result.slices_per_second / network_only:8.2f}")
    print(f"  peak memory of train_stage: {result.peak_memory_mb:.0f} MiB ({_memory_kind(device)})")


def _memory_kind(device: torch.device) -> str:
    return "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS"


def paper_denoiser(steps: int, device: torch.device, cpu_latent_size: int) -> None:
    """The paper preset's denoiser, forward + backward on one window of 16 latent slices."""
    config = load_config("paper")
    size = 64 if device.type == "cuda" else cpu_latent_size
    length = config.data.window_length
    model, loss = random_window_step(config, size, 1, device)
    parameters = sum(parameter.numel() for parameter in model.parameters()) / 1e6
    note = "the paper's size" if size == 64 else f"reduced from the paper's 64x64 (CPU; {size * 8} px slices)"
    print(
        f"paper preset denoiser ({parameters:.0f}M parameters), 1 window of {length} latent slices of "
        f"{size}x{size}: {note}; gradient checkpointing {config.train.gradient_checkpointing}; {device}"
    )
    variants = [("fp32 eager", False, False)]
    if device.type == "cuda":
        variants += [("bf16 eager", True, False), ("bf16 compiled", True, True)]
    timings = {}
    for name, bf16, compiled in variants:
        warmup = 2 if compiled else 1
        seconds, memory = time_steps(model, loss, steps, warmup, device, bf16=bf16, compiled=compiled)
        timings[name] = seconds
        print(f"  {name:14s} {length / seconds:8.2f} slices/s  {seconds:7.3f} s/step  peak {memory:8.0f} MiB")
    if device.type == "cuda":
        print(f"  speed-up bf16 / fp32 (eager):        {timings['fp32 eager'] / timings['bf16 eager']:.2f}x")
        print(f"  speed-up compiled / eager (bf16):    {timings['bf16 eager'] / timings['bf16 compiled']:.2f}x")
    else:
        print("  (bf16 and compiled variants are measured on CUDA only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-steps", type=int, default=30)
    parser.add_argument("--paper-steps", type=int, default=2)
    parser.add_argument("--cpu-latent-size", type=int, default=16, help="paper-model latent size on CPU")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args()
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    tiny_stage1(args.tiny_steps, device)
    paper_denoiser(args.paper_steps, device, args.cpu_latent_size)


if __name__ == "__main__":
    main()
