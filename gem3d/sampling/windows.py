"""Pure window planner for bi-directional propagation: which slices each window generates, inpaints and writes.

Rule (every slice of the volume is written exactly once):
- Every window has `min(window_length, num_slices)` frames, the length the denoiser was trained on.
- `directions="both"`: the upward chain writes `[start_slice, Z)` in ascending order and the downward chain
  writes `[0, start_slice)` in descending order (mirrored windows); there is no downward chain when
  `start_slice == 0`. Both first windows are conditioned on the given informed slice, none is inpainted.
- `directions="up"` (the ablation without bi-directional propagation): one upward chain that writes the whole
  volume from slice 0; `start_slice` is not used, so the caller's informed slice should belong to slice 0.
- Inside a chain (in generation order) the first window starts at the chain's first slice; each next window
  starts `overlap` slices before the end of the previous one, inpaints the frames they share and is
  conditioned on the previous window's last slice. A window that would run past the end of the chain is
  aligned to the end instead, so the last window may share more than `overlap` frames.
- A first window longer than its chain (the chain is shorter than the window) is aligned to the chain's end
  and reaches into the other chain's range; those leading frames are generated as context but not written
  (`write_from`). With a volume no longer than the window, every chain is a single window and `overlap`
  plays no part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class Window:
    """One denoising window: volume slices in generation order and how they relate to the previous window."""

    slices: tuple[int, ...]
    inpaint_count: int
    condition_slice: int | None
    write_from: int

    @property
    def written(self) -> tuple[int, ...]:
        """Volume indices this window writes into the output (the others are context)."""
        return self.slices[self.write_from :]


@dataclass(frozen=True)
class Chain:
    """Windows generated one after another in one direction, each depending on the one before."""

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
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    if not 0 <= start_slice < num_slices:
        raise ValueError(f"start_slice must be in [0, {num_slices}), got {start_slice}")
    if window_length < 1:
        raise ValueError(f"window_length must be >= 1, got {window_length}")
    if not 0 <= overlap < window_length:
        raise ValueError(f"overlap must be in [0, window_length={window_length}), got {overlap}")
    length = min(window_length, num_slices)
    if directions == "up":
        return (_plan_chain("up", num_slices, length, overlap, lambda position: position),)
    if directions != "both":
        raise ValueError(f"directions must be 'both' or 'up', got {directions!r}")
    upward = _plan_chain("up", num_slices - start_slice, length, overlap, lambda position: start_slice + position)
    if start_slice == 0:
        return (upward,)
    downward = _plan_chain("down", start_slice, length, overlap, lambda position: start_slice - 1 - position)
    return (upward, downward)


def _plan_chain(direction: Direction, span: int, length: int, overlap: int, to_volume: Callable[[int], int]) -> Chain:
    """Windows over chain positions `[0, span)` (position 0 generated first), mapped to volume indices."""
    starts = [min(0, span - length)]
    while starts[-1] + length < span:
        starts.append(min(starts[-1] + length - overlap, span - length))
    windows = []
    for index, start in enumerate(starts):
        previous_end = starts[index - 1] + length if index else start
        inpaint_count = previous_end - start
        windows.append(
            Window(
                slices=tuple(to_volume(position) for position in range(start, start + length)),
                inpaint_count=inpaint_count,
                condition_slice=to_volume(previous_end - 1) if index else None,
                write_from=max(inpaint_count, -start),
            )
        )
    return Chain(direction=direction, windows=tuple(windows))
