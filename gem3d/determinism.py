"""Deterministic kernels on request: the settings PyTorch documents for run-to-run identical results on GPU.

On CPU our training and sampling are already bit-for-bit reproducible; on CUDA, cuDNN autotuning, TF32 and
atomic-add kernels make reruns differ slightly unless these settings are on (at some cost in speed).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS needs a fixed workspace configuration for deterministic matrix products (CUDA >= 10.2)."""


_lock = threading.Lock()
_holders = 0
_saved: tuple = ()


def _enable() -> None:
    global _holders, _saved
    with _lock:
        if _holders == 0:
            cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
            _saved = (
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                cudnn.benchmark,
                cudnn.deterministic,
                cudnn.allow_tf32,
                matmul.allow_tf32,
            )
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            torch.use_deterministic_algorithms(True)
            cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = False, True, False, False
        _holders += 1


def _restore() -> None:
    global _holders
    with _lock:
        _holders -= 1
        if _holders == 0:
            algorithms, warn_only, *flags = _saved
            torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
            cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
            cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = flags


@contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Within the block, use deterministic algorithms only, no cuDNN autotuning and no TF32; restore after.

    A no-op when `enabled` is False. The settings are process-wide, so concurrent blocks (threaded Dask
    workers) share them: the first to enter saves the previous settings and the last to leave restores them.
    An op with no deterministic implementation raises inside the block rather than silently differing.
    """
    if not enabled:
        yield
        return
    _enable()
    try:
        yield
    finally:
        _restore()
