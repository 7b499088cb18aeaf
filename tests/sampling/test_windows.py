"""The window planner writes every slice exactly once and chains windows as the propagation needs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gem3d.sampling.windows import Chain, Window, plan_chains


@st.composite
def plans(draw):
    num_slices = draw(st.integers(1, 40))
    start_slice = draw(st.integers(0, num_slices - 1))
    window_length = draw(st.integers(1, 12))
    overlap = draw(st.integers(0, min(window_length, num_slices) - 1))
    directions = draw(st.sampled_from(["both", "up"]))
    return num_slices, start_slice, window_length, overlap, directions


def _check_chain(chain: Chain, length: int, overlap: int, num_slices: int) -> list[int]:
    step = 1 if chain.direction == "up" else -1
    written: list[int] = []
    for index, window in enumerate(chain.windows):
        assert len(window.slices) == length
        assert all(0 <= slice_index < num_slices for slice_index in window.slices)
        assert all(b - a == step for a, b in zip(window.slices, window.slices[1:], strict=False))
        if index == 0:
            assert window.inpaint_count == 0 and window.condition_slice is None
        else:
            previous = chain.windows[index - 1]
            shared = window.inpaint_count
            assert window.slices[:shared] == previous.slices[length - shared :]
            assert set(window.slices[:shared]) <= set(written)
            assert window.condition_slice == previous.slices[-1]
            assert window.condition_slice in written
            assert window.write_from == shared
            if index < len(chain.windows) - 1:
                assert shared == overlap
            else:
                assert shared >= overlap
        assert not set(window.written) & set(written)
        written.extend(window.written)
    return written


@settings(max_examples=200, deadline=None)
@given(plans())
def test_every_slice_is_written_exactly_once(plan):
    num_slices, start_slice, window_length, overlap, directions = plan
    chains = plan_chains(num_slices, start_slice, window_length, overlap, directions)
    length = min(window_length, num_slices)
    written_by = {chain.direction: _check_chain(chain, length, overlap, num_slices) for chain in chains}
    assert sorted(index for written in written_by.values() for index in written) == list(range(num_slices))
    if directions == "up":
        assert [chain.direction for chain in chains] == ["up"]
        assert written_by["up"] == list(range(num_slices))
    else:
        assert written_by["up"] == list(range(start_slice, num_slices))
        assert written_by.get("down", []) == list(range(start_slice - 1, -1, -1))
        assert ("down" in written_by) == (start_slice > 0)


def _window(slices, inpaint_count=0, condition_slice=None, write_from=0):
    return Window(tuple(slices), inpaint_count, condition_slice, write_from)


def test_volume_with_chains_longer_than_the_window():
    up, down = plan_chains(10, 3, 4, 1)
    assert up == Chain("up", (_window([3, 4, 5, 6]), _window([6, 7, 8, 9], 1, 6, 1)))
    assert down == Chain("down", (_window([3, 2, 1, 0], write_from=1),))
    assert down.windows[0].written == (2, 1, 0)


def test_last_window_is_aligned_to_the_end_of_the_volume():
    (up,) = plan_chains(9, 0, 4, 1)
    assert up.windows == (_window([0, 1, 2, 3]), _window([3, 4, 5, 6], 1, 3, 1), _window([5, 6, 7, 8], 2, 6, 2))


def test_no_overlap_conditions_on_the_previous_last_slice_without_inpainting():
    (up,) = plan_chains(7, 0, 3, 0)
    assert up.windows == (_window([0, 1, 2]), _window([3, 4, 5], 0, 2, 0), _window([4, 5, 6], 2, 5, 2))


def test_volume_shorter_than_the_window_uses_the_whole_volume_per_window():
    up, down = plan_chains(3, 1, 8, 5)
    assert up == Chain("up", (_window([0, 1, 2], write_from=1),))
    assert down == Chain("down", (_window([2, 1, 0], write_from=2),))


def test_volume_as_long_as_the_window_is_one_window():
    assert plan_chains(4, 0, 4, 1) == (Chain("up", (_window([0, 1, 2, 3]),)),)


def test_start_at_the_last_slice():
    up, down = plan_chains(6, 5, 3, 1)
    assert up == Chain("up", (_window([3, 4, 5], write_from=2),))
    assert down == Chain("down", (_window([4, 3, 2]), _window([2, 1, 0], 1, 2, 1)))


def test_single_slice_volume():
    assert plan_chains(1, 0, 16, 0) == (Chain("up", (_window([0]),)),)


def test_up_only_starts_at_slice_zero_whatever_the_start_slice():
    assert plan_chains(7, 3, 4, 1, "up") == (Chain("up", (_window([0, 1, 2, 3]), _window([3, 4, 5, 6], 1, 3, 1))),)


@pytest.mark.parametrize(
    ("num_slices", "start_slice", "window_length", "overlap", "directions"),
    [
        (0, 0, 4, 1, "both"),
        (5, 5, 4, 1, "both"),
        (5, -1, 4, 1, "both"),
        (5, 0, 0, 0, "both"),
        (5, 0, 4, 4, "both"),
        (5, 0, 4, -1, "both"),
        (5, 0, 4, 1, "down"),
    ],
)
def test_invalid_arguments_are_rejected(num_slices, start_slice, window_length, overlap, directions):
    with pytest.raises(ValueError):
        plan_chains(num_slices, start_slice, window_length, overlap, directions)
