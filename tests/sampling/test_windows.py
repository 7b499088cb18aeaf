"""The window planner presents every window in ascending order, writes every slice once, inpaints what it shares."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gem3d.sampling.windows import Chain, Window, dependency_levels, plan_chains, window_boundaries


@st.composite
def plans(draw):
    num_slices = draw(st.integers(1, 60))
    start_slice = draw(st.integers(0, num_slices - 1))
    window_length = draw(st.integers(1, 16))
    overlap = draw(st.integers(0, window_length - 1))
    directions = draw(st.sampled_from(["both", "up"]))
    return num_slices, start_slice, window_length, overlap, directions


def _chains(plan) -> dict[str, Chain]:
    return {chain.direction: chain for chain in plan_chains(*plan)}


def _windows(plan) -> list[Window]:
    return [window for chain in plan_chains(*plan) for window in chain.windows]


@settings(max_examples=300, deadline=None)
@given(plans())
def test_every_window_is_full_length_and_ascending(plan):
    num_slices, _, window_length, _, _ = plan
    for window in _windows(plan):
        assert len(window.slices) == min(window_length, num_slices)
        assert list(window.slices) == list(range(window.slices[0], window.slices[0] + len(window.slices)))
        assert window.slices[0] >= 0 and window.slices[-1] < num_slices


@settings(max_examples=300, deadline=None)
@given(plans())
def test_every_slice_is_written_exactly_once_and_known_frames_are_the_already_written_ones(plan):
    written: list[int] = []
    for window in _windows(plan):
        assert window.written, "a window that writes nothing should not be planned"
        assert set(window.known_slices) == set(window.slices) & set(written)
        assert not set(window.written) & set(written)
        written.extend(window.written)
    assert sorted(written) == list(range(plan[0]))


@settings(max_examples=300, deadline=None)
@given(plans())
def test_up_windows_inpaint_leading_frames_and_down_windows_trailing_frames(plan):
    for chain in plan_chains(*plan):
        for window in chain.windows:
            count = len(window.known_positions)
            length = len(window.slices)
            expected = range(count) if chain.direction == "up" else range(length - count, length)
            assert window.known_positions == tuple(expected)


@settings(max_examples=300, deadline=None)
@given(plans())
def test_chains_visit_windows_in_their_direction_sharing_the_overlap(plan):
    num_slices, _, _, overlap, _ = plan
    for chain in plan_chains(*plan):
        for index in range(1, len(chain.windows)):
            previous, window = chain.windows[index - 1], chain.windows[index]
            if chain.direction == "up":
                assert window.slices[0] > previous.slices[0]
                assert window.condition_slice == previous.slices[-1]
                aligned = window.slices[-1] == num_slices - 1
            else:
                assert window.slices[0] < previous.slices[0]
                assert window.condition_slice == previous.slices[0]
                aligned = window.slices[0] == 0
            shared = len(set(window.slices) & set(previous.slices))
            assert shared == overlap or (aligned and shared > overlap)


@settings(max_examples=300, deadline=None)
@given(plans())
def test_both_directions_start_from_the_informed_slice_inside_the_window(plan):
    num_slices, start_slice, window_length, _, directions = plan
    chains = _chains(plan)
    first_up = chains["up"].windows[0]
    if directions == "up":
        assert list(chains) == ["up"] and first_up.slices[0] == 0
        return
    assert start_slice in first_up.slices and first_up.condition_slice is None
    assert ("down" in chains) == (first_up.slices[0] > 0)
    if "down" not in chains:
        return
    first_down = chains["down"].windows[0]
    if start_slice in first_down.slices:
        assert first_down.condition_slice is None
        assert first_down.slices[-1] == start_slice or first_down.slices[0] == 0
        assert start_slice in first_down.known_slices
    else:
        # the window ending at start_slice would write nothing: the chain continues below the first up window
        assert window_length == 1 or start_slice == num_slices - 1
        assert first_down.condition_slice == first_up.slices[0]


@settings(max_examples=300, deadline=None)
@given(plans())
def test_windows_run_after_the_windows_that_wrote_what_they_use(plan):
    chains = plan_chains(*plan)
    levels = dependency_levels(chains)
    level_of_writer: dict[int, int] = {}
    for chain, chain_levels in zip(chains, levels, strict=True):
        for window, level in zip(chain.windows, chain_levels, strict=True):
            used = [*window.known_slices, *([] if window.condition_slice is None else [window.condition_slice])]
            assert all(level_of_writer[slice_index] < level for slice_index in used)
            assert level == 0 if not used else level == 1 + max(level_of_writer[index] for index in used)
            level_of_writer.update(dict.fromkeys(window.written, level))
    by_direction = dict(zip((chain.direction for chain in chains), levels, strict=True))
    assert by_direction["up"] == tuple(range(len(by_direction["up"])))
    if "down" in by_direction:
        assert by_direction["down"] == tuple(range(1, len(by_direction["down"]) + 1))


@settings(max_examples=200, deadline=None)
@given(plans())
def test_window_boundaries_separate_the_windows_written_blocks(plan):
    boundaries = window_boundaries(*plan)
    edges = [0, *boundaries, plan[0]]
    blocks = [tuple(range(low, high)) for low, high in zip(edges, edges[1:], strict=False)]
    assert sorted(blocks) == sorted(tuple(sorted(window.written)) for window in _windows(plan))


def test_issue_example_down_windows_are_ascending_and_the_first_inpaints_the_start_slice():
    up, down = plan_chains(40, 12, 8, 1)
    assert up.windows == (
        Window(tuple(range(12, 20)), (), None),
        Window(tuple(range(19, 27)), (0,), 19),
        Window(tuple(range(26, 34)), (0,), 26),
        Window(tuple(range(32, 40)), (0, 1), 33),
    )
    assert down.windows == (Window(tuple(range(5, 13)), (7,), None), Window(tuple(range(0, 8)), (5, 6, 7), 5))
    assert [window.written for window in down.windows] == [tuple(range(5, 12)), tuple(range(0, 5))]
    assert window_boundaries(40, 12, 8, 1) == [5, 12, 20, 27, 34]


def test_start_near_the_bottom_aligns_the_down_window_to_slice_zero():
    up, down = plan_chains(10, 3, 4, 1)
    assert up.windows == (Window((3, 4, 5, 6), (), None), Window((6, 7, 8, 9), (0,), 6))
    assert down.windows == (Window((0, 1, 2, 3), (3,), None),)


def test_start_at_the_top_slice_aligns_the_up_window_and_continues_below_it():
    up, down = plan_chains(6, 5, 3, 1)
    assert up.windows == (Window((3, 4, 5), (), None),)
    assert down.windows == (Window((1, 2, 3), (2,), 3), Window((0, 1, 2), (1, 2), 1))


def test_up_window_aligned_to_the_top_is_inpainted_by_the_first_down_window():
    up, down = plan_chains(10, 8, 4, 1)
    assert up.windows == (Window((6, 7, 8, 9), (), None),)
    assert down.windows == (
        Window((5, 6, 7, 8), (1, 2, 3), None),
        Window((2, 3, 4, 5), (3,), 5),
        Window((0, 1, 2, 3), (2, 3), 2),
    )


def test_volume_no_longer_than_the_window_is_one_window_around_the_start_slice():
    assert plan_chains(3, 1, 8, 5) == (Chain("up", (Window((0, 1, 2), (), None),)),)
    assert plan_chains(4, 3, 4, 1) == (Chain("up", (Window((0, 1, 2, 3), (), None),)),)


def test_single_slice_windows_condition_on_the_neighbour_they_continue_from():
    up, down = plan_chains(4, 2, 1, 0)
    assert up.windows == (Window((2,), (), None), Window((3,), (), 2))
    assert down.windows == (Window((1,), (), 2), Window((0,), (), 1))


def test_single_slice_volume():
    assert plan_chains(1, 0, 16, 0) == (Chain("up", (Window((0,), (), None),)),)


def test_up_only_starts_at_slice_zero_whatever_the_start_slice():
    assert plan_chains(7, 3, 4, 1, "up") == (
        Chain("up", (Window((0, 1, 2, 3), (), None), Window((3, 4, 5, 6), (0,), 3))),
    )


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
