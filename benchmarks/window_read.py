"""Time to get one random 16-slice training window: our Zarr store versus the reference approach.

The reference (the paper's code) reloads the whole compressed volume (`np.load` of an `.npz`) for every
sample and resizes every slice in-plane before cutting the window. We read the window's chunks from the
preprocessed store. Same volume, same machine, one run; prints both times and the ratio (target >= 50x).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import zoom

from gem3d.anatomy import anatomy_outline
from gem3d.store import init_store, open_case_arrays, publish_case, stage_case


def reference_window(npz_path: Path, start: int, window_length: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: load the whole image and label, resize every slice, then cut the window."""
    arrays = np.load(npz_path)
    image, label = arrays["image"], arrays["label"]
    factor = (size / image.shape[1], size / image.shape[2])
    image = np.stack([zoom(slice_, factor, order=1) for slice_ in image])
    label = np.stack([zoom(slice_, factor, order=0) for slice_ in label])
    return image[start : start + window_length], label[start : start + window_length]


def phantom_volume(rng: np.random.Generator, slices: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A head-like volume (ellipsoid, inner structure, a lesion, scanner noise), as compressible as real MRI."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (slices, size, size)), indexing="ij")
    radius = x**2 / 0.7 + y**2 / 0.85 + z**2 / 0.9
    image = np.where(radius < 1, 300 + 150 * np.cos(6 * radius), 0.0)
    lesion = (x - 0.3) ** 2 + (y + 0.2) ** 2 + z**2 < 0.04
    image = image + 400 * lesion + rng.normal(0, 8, size=image.shape) * (radius < 1)
    return image.astype(np.float32), lesion.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=155, help="Z of the volume (BraTS: 155)")
    parser.add_argument("--raw-size", type=int, default=240, help="raw in-plane size (BraTS: 240)")
    parser.add_argument("--size", type=int, default=128, help="model in-plane size")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    volume, raw_label = phantom_volume(rng, args.slices, args.raw_size)
    with tempfile.TemporaryDirectory() as folder:
        npz_path = Path(folder) / "case.npz"
        np.savez_compressed(npz_path, image=volume, label=raw_label)
        store = init_store(Path(folder) / "store.zarr", {})
        image, label = reference_window(npz_path, 0, args.slices, args.size)
        staged = stage_case(store, "case", image.astype(np.float32), label, {}, outline=anatomy_outline(image))
        publish_case(store, "case", staged)
        image_array, label_array = open_case_arrays(store, "case")

        starts = rng.integers(0, args.slices - args.window, size=args.repeats)
        began = time.perf_counter()
        for start in starts[: max(3, args.repeats // 5)]:
            reference_window(npz_path, int(start), args.window, args.size)
        reference = (time.perf_counter() - began) / max(3, args.repeats // 5)
        began = time.perf_counter()
        for start in starts:
            window = image_array[start : start + args.window], label_array[start : start + args.window]
            assert window[0].shape == (args.window, args.size, args.size)
        ours = (time.perf_counter() - began) / args.repeats

    print(f"volume {args.slices}x{args.raw_size}x{args.raw_size} -> {args.size}x{args.size}, window {args.window}")
    print(f"reference (np.load .npz + resize every slice): {reference * 1000:8.1f} ms per window")
    print(f"gem3d store (the dataset's open arrays, read the window's chunks): {ours * 1000:8.1f} ms per window")
    print(f"speed-up: {reference / ours:.1f}x (target >= 50x)")


if __name__ == "__main__":
    main()
