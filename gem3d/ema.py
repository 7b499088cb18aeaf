"""Exponential moving average of a network's weights: the weights that training delivers."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialMovingAverage:
    """A frozen copy of a network whose parameters follow the trained ones: `w <- w + (1 - d) * (w_train - w)`.

    The decay warms up as `min(decay, (1 + n) / (10 + n))` after n updates (as diffusers' EMAModel does), so
    that a short run's average is not dominated by the initial weights. Buffers are copied, not averaged.
    A parameter that did not change keeps exactly its value (the update is a `lerp` towards itself).
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(network).eval().requires_grad_(False)
        self.decay = decay
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay of the next update."""
        updates = self.num_updates + 1
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Move the averaged weights one step towards `network`'s."""
        weight = 1.0 - self.current_decay()
        for averaged, current in zip(self.module.parameters(), network.parameters(), strict=True):
            averaged.lerp_(current.detach(), weight)
        for averaged, current in zip(self.module.buffers(), network.buffers(), strict=True):
            averaged.copy_(current)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Averaged weights and update count (tensors and ints only: loads with `weights_only=True`)."""
        return {"weights": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        self.module.load_state_dict(state["weights"])
        self.num_updates = int(state["num_updates"])
