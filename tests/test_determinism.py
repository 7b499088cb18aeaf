"""Deterministic-kernel settings: on inside the block, restored after, shared safely between threads."""

from __future__ import annotations

import threading

import pytest
import torch

from gem3d.determinism import deterministic_kernels


def _settings() -> tuple:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)


def test_settings_are_on_inside_and_restored_after_even_on_error():
    before = _settings()
    with pytest.raises(RuntimeError, match="inside"), deterministic_kernels(True):
        assert _settings() == (True, False, False, False)
        raise RuntimeError("inside")
    assert _settings() == before


def test_disabled_block_changes_nothing():
    before = _settings()
    with deterministic_kernels(False):
        assert _settings() == before


def test_overlapping_blocks_in_threads_keep_the_settings_until_the_last_leaves():
    before = _settings()
    first_inside, second_inside, first_left = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with deterministic_kernels(True):
            first_inside.set()
            second_inside.wait(5)
        first_left.set()

    def second() -> None:
        first_inside.wait(5)
        with deterministic_kernels(True):
            second_inside.set()
            first_left.wait(5)
            seen["after the first left"] = torch.are_deterministic_algorithms_enabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"after the first left": True}
    assert _settings() == before
