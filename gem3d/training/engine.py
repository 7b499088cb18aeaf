"""The training engine: device and process group, per-step data indices, and one phase's optimisation state.

AdamW with linear warm-up, gradient clipping, EMA of weights, bf16 autocast on GPU, optional DDP and torch.compile.
The autoencoder phase also trains a patch discriminator (`Adversary`), as in MONAI's latent-diffusion recipe.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from monai.losses import PatchAdversarialLoss
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gem3d.config import Config, StageTrainConfig
from gem3d.ema import ExponentialMovingAverage
from gem3d.models.autoencoder import build_discriminator, build_perceptual_loss, check_discriminator_fits
from gem3d.seeds import derive_seed
from gem3d.training.phases import LOSSES, AutoencoderObjective, LossContext, Phase


@dataclass
class Runtime:
    """Where this process trains: device, rank, world size, autocast, and whether it owns the process group."""

    device: torch.device
    rank: int
    world_size: int
    bf16: bool
    owns_process_group: bool

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and bundles."""
        return self.rank == 0

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on GPU when mixed precision is on; a no-op context otherwise."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for on one process)."""
        if self.world_size > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over all ranks."""
        value = value.detach().clone()
        if self.world_size > 1:
            dist.all_reduce(value)
            value /= self.world_size
        return float(value)


def start_runtime(config: Config) -> Runtime:
    """Pick the device and join the process group when launched with WORLD_SIZE > 1 (torchrun)."""
    wanted = config.train.device
    use_cuda = wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    rank = dist.get_rank() if world_size > 1 else 0
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        device = torch.device("cpu")
    precision = config.train.mixed_precision
    bf16 = use_cuda and (precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()))
    return Runtime(device, rank, world_size, bf16, owns)


class StepBatchSampler:
    """The dataset indices of each step's batch on one rank: `(step * world + rank) * batch + 0 .. batch-1`.

    Every (step, rank) gets its own indices, so ranks see different samples and the batch of step k does not
    depend on where the iteration started.
    """

    def __init__(self, start_step: int, stop_step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.start_step, self.stop_step = start_step, stop_step
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.stop_step):
            first = (step * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step)


def _set_trainable(network: nn.Module, phase: Phase, settings: StageTrainConfig) -> list[nn.Parameter]:
    """Freeze what the phase does not train; return the trained parameters."""
    network.train()
    if phase.volumetric and not settings.train_all_parameters:
        network.requires_grad_(False)
        for parameter in network.temporal_parameters():
            parameter.requires_grad_(True)
    else:
        network.requires_grad_(True)
    return [parameter for parameter in network.parameters() if parameter.requires_grad]


def _forward_module(network: nn.Module, phase: Phase, config: Config, runtime: Runtime) -> nn.Module:
    """What the loop calls: the network (or the autoencoder objective), wrapped in DDP and compiled if asked."""
    module = network
    if phase.network == "autoencoder":
        settings = config.autoencoder
        if config.train.gradient_checkpointing:
            network.autoencoder.enable_gradient_checkpointing()
        perceptual = None
        if settings.perceptual_weight > 0:
            perceptual = build_perceptual_loss(settings.perceptual_network).to(runtime.device)
        module = AutoencoderObjective(network, settings.kl_weight, perceptual, settings.perceptual_weight)
    return _distributed(module, config, runtime)


def _distributed(module: nn.Module, config: Config, runtime: Runtime) -> nn.Module:
    """The module wrapped in DDP on more than one process, and compiled when the config asks."""
    if runtime.world_size > 1:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        module = DistributedDataParallel(module, device_ids=device_ids)
    if config.train.compile:
        module = torch.compile(module)
    return module


def _warmup(warmup_steps: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))


class Adversary:
    """The autoencoder phase's patch discriminator, its AdamW optimiser and its least-squares adversarial loss.

    From phase step `adversarial_start` on, the generator loss gains `adversarial_weight` * the adversarial loss of
    its reconstructions, and after each generator step the discriminator takes one step on real slices against the
    detached reconstructions, its loss scaled by the same weight (MONAI's generative autoencoder tutorials).
    """

    def __init__(self, config: Config, learning_rate: float, steps: int, runtime: Runtime) -> None:
        settings = config.autoencoder
        self.weight, self.start, self.runtime = settings.adversarial_weight, settings.adversarial_start, runtime
        if self.start < steps:  # checked only when it will train: short runs on tiny slices need no change
            check_discriminator_fits(settings.discriminator_layers, config.data.in_plane_size)
        with torch.random.fork_rng(devices=[]):  # its own seed: the global stream stays as without it
            torch.manual_seed(derive_seed(config.seed, "autoencoder", "discriminator"))
            network = build_discriminator(settings.discriminator_channels, settings.discriminator_layers)
        self.network = network.to(runtime.device).train()
        self.forward = _distributed(self.network, config, runtime)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=learning_rate)
        self.criterion = PatchAdversarialLoss(criterion="least_squares")

    def active(self, step: int) -> bool:
        """Whether the phase step `step` (0-based) trains adversarially."""
        return step >= self.start

    def generator_loss(self, reconstruction: torch.Tensor) -> torch.Tensor:
        """How far the discriminator sees the (N, 1, H, W) reconstructions from real (the generator's term).

        The unwrapped discriminator with its parameters frozen: the gradient reaches the autoencoder only, and the
        discriminator's DDP wrapper sees no backward of its own.
        """
        self.network.requires_grad_(False)
        logits = self.network(reconstruction.contiguous().float())[-1]  # (N, 1, h, w) patch logits
        self.network.requires_grad_(True)
        return self.criterion(logits, target_is_real=True, for_discriminator=False)

    def train_step(self, slices: torch.Tensor, reconstruction: torch.Tensor) -> float:
        """One discriminator step on (N, 1, H, W) real slices against detached reconstructions; its loss (rank mean)."""
        with self.runtime.autocast():
            fake = self.forward(reconstruction.detach().contiguous().float())[-1]  # (N, 1, h, w)
            real = self.forward(slices.detach().contiguous().float())[-1]
            loss = 0.5 * (
                self.criterion(fake, target_is_real=False, for_discriminator=True)
                + self.criterion(real, target_is_real=True, for_discriminator=True)
            )
        self.optimizer.zero_grad(set_to_none=True)
        (self.weight * loss).backward()
        self.optimizer.step()
        return self.runtime.mean(loss)

    def state_dict(self) -> dict:
        """Discriminator weights and optimiser state (tensors and plain values only)."""
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from what `state_dict` returned."""
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])


class PhaseRun:
    """The training state of one phase: network, its forward wrapper, optimiser, warm-up schedule, EMA, step.

    In the autoencoder phase with a positive `adversarial_weight` it also owns the discriminator (`adversary`).
    """

    def __init__(self, network: nn.Module, context: LossContext, runtime: Runtime) -> None:
        self.phase, self.context, self.runtime = context.phase, context, runtime
        config = context.config
        self.settings: StageTrainConfig = getattr(config.train, self.phase.settings)
        self.network = network.to(runtime.device)
        self.trainable = _set_trainable(self.network, self.phase, self.settings)
        self.forward = _forward_module(self.network, self.phase, config, runtime)
        self.optimizer = torch.optim.AdamW(self.trainable, lr=self.settings.learning_rate)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup(self.settings.warmup_steps))
        self.ema = ExponentialMovingAverage(self.network, self.settings.ema_decay)
        self.adversary = None
        if self.phase.network == "autoencoder" and config.autoencoder.adversarial_weight > 0:
            self.adversary = Adversary(config, self.settings.learning_rate, self.settings.steps, runtime)
        self.step = 0

    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimiser step on one batch (then one discriminator step once adversarial).

        Returns the loss (mean over ranks), learning rate, gradient norm, and the adversarial figures when they
        were computed.
        """
        learning_rate = self.lr_schedule.get_last_lr()[0]
        adversarial = self.adversary is not None and self.adversary.active(self.step)
        figures: dict[str, float] = {}
        with self.runtime.autocast():
            if adversarial:
                slices = batch["image"].to(self.context.device)  # (B, 1, H, W)
                loss, reconstruction = self.forward(slices)
                generator_adversarial = self.adversary.generator_loss(reconstruction)
                loss = loss + self.adversary.weight * generator_adversarial
                figures["generator_adversarial_loss"] = self.runtime.mean(generator_adversarial)
            else:
                loss = LOSSES[self.phase.network](self.context, self.forward, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.settings.grad_clip if self.settings.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        if adversarial:
            figures["discriminator_loss"] = self.adversary.train_step(slices, reconstruction)
        self.ema.update(self.network)
        self.step += 1
        metrics = {"loss": self.runtime.mean(loss), "learning_rate": learning_rate, "grad_norm": float(grad_norm)}
        return {**metrics, **figures}

    def state_dict(self) -> dict:
        """Weights, EMA, optimiser, schedule, step (and discriminator): tensors and plain values only."""
        state = {
            "phase_step": self.step,
            "network": self.network.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
        }
        if self.adversary is not None:
            state["discriminator"] = self.adversary.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from what `state_dict` returned."""
        self.network.load_state_dict(state["network"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        if self.adversary is not None:
            if "discriminator" not in state:
                raise ValueError("the checkpoint holds no discriminator: it was written with adversarial_weight 0")
            self.adversary.load_state_dict(state["discriminator"])
        self.step = int(state["phase_step"])


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
