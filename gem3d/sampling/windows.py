"""Pure window planner for bi-directional propagation: which slices each window covers, inpaints and writes.

Stage 2 only ever saw windows of consecutive slices in ascending order with the informed slice inside the
window, and its slice-axis layers know direction; every planned window reaches the denoiser that way. Rule:
- Every window has `min(window_length, num_slices)` frames, in ascending slice order (`Window.slices`). Only the
  order in which the downward chain visits its windows goes down, never the order of frames inside a window.
- A frame already written by an earlier window is a known frame (`known_positions`): inpainted when overlapped
  inpainting is on, never rewritten. Every other frame is generated and written by its window (`written`), so
  every slice is written exactly once and every window writes at least one slice.
- `directions="both"`, upward chain (generated first): the first window covers `start_slice .. start_slice+L-1`
  and is conditioned on the request's informed slice. Each next window starts `overlap` slices before the end of
  the previous one, so its leading shared frames are known, and is conditioned on the previous window's last
  slice. A window that would run past the top of the volume is aligned to it (it then shares more frames).
- Downward chain: the first window covers `start_slice-L+1 .. start_slice`, so slice `start_slice` lies inside
  it as in training; it is conditioned on the request's informed slice and inpaints slice `start_slice` (and any
  other slice the first upward window wrote) as trailing known frames. Each next window ends `overlap` slices
  above the start of the previous one, so its trailing shared frames are known, and is conditioned on the
  previous window's lowest slice. A window that would run past slice 0 is aligned to it. There is no downward
  chain when the first upward window reaches slice 0; a first downward window that would write nothing (window
  length 1, or a start at the top slice with the upward window aligned to the top) is left out, and the next
  one is conditioned on the first upward window's lowest slice.
- `directions="up"` (the ablation without bi-directional propagation): one upward chain from slice 0;
  `start_slice` is not used, so the caller's informed slice should belong to slice 0.
- A window can run once every window that wrote one of its known frames or its condition slice has run
  (`dependency_levels`): the downward chain runs one step behind the upward one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class Window:
    """One denoising window: ascending volume slices, which of its frames are known, and its condition slice."""

    slices: tuple[int, ...]
    known_positions: tuple[int, ...]
    condition_slice: int | None

    @property
    def known_slices(self) -> tuple[int, ...]:
        """Volume indices of the known frames (written by earlier windows; inpainted, not rewritten)."""
        return tuple(self.slices[position] for position in self.known_positions)

    @property
    def written_positions(self) -> tuple[int, ...]:
        """Positions in the window of the frames this window generates and writes."""
        return tuple(position for position in range(len(self.slices)) if position not in self.known_positions)

    @property
    def written(self) -> tuple[int, ...]:
        """Volume indices this window writes into the output."""
        return tuple(self.slices[position] for position in self.written_positions)


@dataclass(frozen=True)
class Chain:
    """Windows visited one after another in one direction, each depending on the one before."""

    direction: Direction
    windows: tuple[Window, ...]


def plan_chains(
    num_slices: int,
    start_slice: int,
    window_length: int,
    overlap: int,
    directions: Literal["both", "up"] = "both",
) -> tuple[Chain, ...]:
    """Plan the windows that generate a volume of `num_slices` slices from an informed slice at `start_slice`."""
    _check_arguments(num_slices, start_slice, window_length, overlap, directions)
    length = min(window_length, num_slices)
    first_up = 0 if directions == "up" else min(start_slice, num_slices - length)
    up_starts = [first_up]
    while up_starts[-1] + length < num_slices:
        up_starts.append(min(up_starts[-1] + length - overlap, num_slices - length))
    up_conditions = [None, *(start + length - 1 for start in up_starts[:-1])]
    written: set[int] = set()
    upward = Chain("up", _windows(up_starts, up_conditions, length, written))
    if first_up == 0:
        return (upward,)
    down_starts = [max(start_slice - length + 1, 0)]
    while down_starts[-1] > 0:
        down_starts.append(max(down_starts[-1] - length + overlap, 0))
    down_conditions = [None, *down_starts[:-1]]
    downward = Chain("down", _windows(down_starts, down_conditions, length, written))
    return (upward, downward)


def dependency_levels(chains: tuple[Chain, ...]) -> tuple[tuple[int, ...], ...]:
    """Per chain and window, the round it can run in: one after every window that wrote its known or condition slice."""
    writer_level: dict[int, int] = {}
    levels = []
    for chain in chains:
        chain_levels = []
        for window in chain.windows:
            needed = [*window.known_slices, *([] if window.condition_slice is None else [window.condition_slice])]
            level = 1 + max((writer_level[slice_index] for slice_index in needed), default=-1)
            writer_level.update(dict.fromkeys(window.written, level))
            chain_levels.append(level)
        levels.append(tuple(chain_levels))
    return tuple(levels)


def window_boundaries(
    num_slices: int, start_slice: int, window_length: int, overlap: int, directions: str = "both"
) -> list[int]:
    """Slices `b` where slice `b - 1` and `b` were written by different windows (where seams could appear)."""
    chains = plan_chains(num_slices, start_slice, window_length, overlap, directions)
    owner = [-1] * num_slices
    for number, window in enumerate(window for chain in chains for window in chain.windows):
        for slice_index in window.written:
            owner[slice_index] = number
    return [index for index in range(1, num_slices) if owner[index] != owner[index - 1]]


def _windows(starts: list[int], conditions: list[int | None], length: int, written: set[int]) -> tuple[Window, ...]:
    """Windows at `starts` in visit order; frames in `written` are known, the rest are written (added to it)."""
    windows = []
    for start, condition in zip(starts, conditions, strict=True):
        slices = tuple(range(start, start + length))
        known = tuple(position for position, slice_index in enumerate(slices) if slice_index in written)
        if len(known) == length:
            continue
        window = Window(slices, known, condition)
        written.update(window.written)
        windows.append(window)
    return tuple(windows)


def _check_arguments(num_slices: int, start_slice: int, window_length: int, overlap: int, directions: str) -> None:
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    if not 0 <= start_slice < num_slices:
        raise ValueError(f"start_slice must be in [0, {num_slices}), got {start_slice}")
    if window_length < 1:
        raise ValueError(f"window_length must be >= 1, got {window_length}")
    if not 0 <= overlap < window_length:
        raise ValueError(f"overlap must be in [0, window_length={window_length}), got {overlap}")
    if directions not in ("both", "up"):
        raise ValueError(f"directions must be 'both' or 'up', got {directions!r}")
