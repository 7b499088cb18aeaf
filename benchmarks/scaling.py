"""Scale-out: speed-up from 1 to N local Dask workers for preprocessing and sampling, and memory over many cases.

(a) preprocess: BraTS-sized brain phantoms (240x240x155 by default) through `preprocess_flow` into a fresh
    store, with the default local cluster (`tasks.runners.make_task_runner`: threads in this process) and with a
    process-based local cluster. Case size matters: numpy, zlib and torch release the GIL on real-sized arrays,
    while on tiny cases Prefect's per-task bookkeeping (which holds it) dominates;
(b) sampling: `enhance_flow` ("ic") from a trained work directory into a fresh synthetic store each time,
    with both clusters;
(c) memory: `--cases` tiny phantoms through `preprocess_flow` (default runner: its workers are threads here),
    sampling this process's RSS while cases are staged, so growth per case is visible (the Prefect API server
    is a separate process and not counted).
Prefect runs under a temporary test API started once; a warm-up flow run (server, MLflow sqlite and imports)
precedes the timed runs. Each timed run includes starting and closing its Dask cluster.
"""

from __future__ import annotations

import os
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="gem3d-bench-prefect-")
os.environ.pop("MLFLOW_TRACKING_URI", None)

from tasks.environment import apply_offline_defaults  # noqa: E402

apply_offline_defaults()

import argparse  # noqa: E402
import functools  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402

from flows.enhance import enhance_flow  # noqa: E402
from flows.preprocess import preprocess_flow  # noqa: E402
from gem3d.checkpoints import read_bundle_meta  # noqa: E402
from gem3d.config import Config  # noqa: E402
from gem3d.io.phantoms import write_phantom_dataset  # noqa: E402
from gem3d.splits import store_cases_of_split  # noqa: E402
from gem3d.store import CASES, staging_dir  # noqa: E402
from tasks.runners import make_task_runner  # noqa: E402

TARGET_EFFICIENCY = 0.8
MEMORY_SHAPE = (48, 48, 24)
BRATS_SHAPE = (240, 240, 155)
MIB = 2**20


def process_runner(workers: int) -> DaskTaskRunner:
    """A local cluster of worker processes (one thread each), the alternative to the default threads."""
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    )


RUNNERS: dict[str, Callable[[int], DaskTaskRunner]] = {
    "threads (default)": lambda workers: make_task_runner(None, workers),
    "processes": process_runner,
}


@dataclass
class Timing:
    """One flow run with one runner kind and worker count: wall time, and the steady rate between the first
    and the last item written (which leaves out cluster start-up, worker imports and the flow's tail)."""

    part: str
    runner: str
    workers: int
    items: int
    seconds: float
    steady_rate: float


class Watcher:
    """Polls an output store while a flow runs: items written (staged or published) and this process's RSS."""

    def __init__(self, store: Path, interval: float = 0.1) -> None:
        self.store, self.interval = store, interval
        self.samples: list[tuple[float, int, float]] = []  # (seconds since start, items, RSS MiB)
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def items(self) -> int:
        folders = [self.store / CASES, staging_dir(self.store)]
        return sum(1 for folder in folders if folder.is_dir() for path in folder.iterdir() if path.is_dir())

    def _watch(self) -> None:
        began = time.perf_counter()
        while not self._finished.wait(self.interval):
            self.samples.append((time.perf_counter() - began, self.items(), rss() / MIB))

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._finished.set()
        self._thread.join()

    def steady_rate(self, total: int) -> float:
        """Items per second from the first poll that saw any item to the first that saw all of them."""
        first = next(((t, n) for t, n, _ in self.samples if n > 0), None)
        last = next((t for t, n, _ in self.samples if n >= total), None)
        if first is None or last is None or last <= first[0]:
            return float("nan")
        return (total - first[1]) / (last - first[0])


def timed_run(part: str, runner: str, workers: int, items: int, out: Path, call: Callable[[], object]) -> Timing:
    """Run `call` (a flow writing `items` items into the store `out`), timing it end to end and in between."""
    with Watcher(out) as watcher:
        began = time.perf_counter()
        call()
        seconds = time.perf_counter() - began
    timing = Timing(part, runner, workers, items, seconds, watcher.steady_rate(items))
    print(
        f"  {part} {runner:<17} {workers} worker(s): {seconds:6.1f} s for {items} items "
        f"(steady {timing.steady_rate:.2f} items/s; load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return timing


def preprocess_part(root: Path, cases: int, shape: tuple[int, int, int], workers: list[int]) -> list[Timing]:
    """Time `preprocess_flow` over `cases` brain phantoms of `shape` into a fresh store per run."""
    dataset = write_phantom_dataset(root / "phantoms", "brain", cases, shape=shape)
    warmup = write_phantom_dataset(root / "warmup", "brain", 2, shape=shape)
    workdir = root / "work"
    preprocess_flow.with_options(task_runner=make_task_runner(None, 1))(
        str(warmup), str(root / "warmup.zarr"), None, None, str(workdir)
    )

    def preprocess(runner: DaskTaskRunner, store: Path) -> None:
        summary = preprocess_flow.with_options(task_runner=runner)(str(dataset), str(store), None, None, str(workdir))
        if summary["published"] != cases:
            raise SystemExit(f"preprocess published {summary['published']} of {cases} cases into {store}")

    timings = []
    for runner, make in RUNNERS.items():
        for count in workers:
            store, task_runner = root / f"store-{len(timings)}.zarr", make(count)
            call = functools.partial(preprocess, task_runner, store)
            timings.append(timed_run("preprocess", runner, count, cases, store, call))
    return timings


def sampling_part(root: Path, trained: Path, volumes: int, per_batch: int, workers: list[int]) -> list[Timing]:
    """Time `enhance_flow` ("ic") from a copy of a trained work directory into a fresh synthetic store per run."""
    workdir = root / "sampling"
    workdir.mkdir(parents=True)
    shutil.copytree(trained / "store.zarr", workdir / "store.zarr")
    shutil.copytree(trained / "models", workdir / "models")
    config = Config.model_validate(read_bundle_meta(workdir / "models" / "stage2")["config"])
    config = config.model_copy(update={"sampling": config.sampling.model_copy(update={"volumes_per_batch": per_batch})})
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    store = workdir / "store.zarr"
    train_cases = store_cases_of_split(store, "train")
    per_case = -(-volumes // len(train_cases))
    cases = train_cases[: -(-volumes // per_case)]
    total = len(cases) * per_case

    def enhance(runner: DaskTaskRunner, out: Path, chosen: list[str], variants: int) -> None:
        outcome = enhance_flow.with_options(task_runner=runner)(
            str(store), str(out), "ic", variants, chosen, str(config_path), str(workdir)
        )
        if len(outcome["written"]) != len(chosen) * variants:
            raise SystemExit(f"enhance wrote {len(outcome['written'])} of {len(chosen) * variants} volumes to {out}")

    enhance(make_task_runner(None, 1), workdir / "warmup.zarr", cases[:1], 1)
    print(
        f"  sampling {total} volumes ({len(cases)} cases x {per_case}), {per_batch} per batch, "
        f"{config.sampling.sampler} {config.sampling.steps} steps, {config.data.in_plane_size}px, "
        f"window {config.data.window_length}",
        flush=True,
    )
    timings = []
    for runner, make in RUNNERS.items():
        for count in workers:
            out, task_runner = workdir / f"synthetic-{len(timings)}.zarr", make(count)
            call = functools.partial(enhance, task_runner, out, cases, per_case)
            timings.append(timed_run("sampling", runner, count, total, out, call))
    return timings


def rss() -> int:
    """Resident memory of this process (flow, tasks and the threaded Dask workers), in bytes."""
    return psutil.Process().memory_info().rss


def memory_part(root: Path, cases: int, workers: int) -> tuple[list[tuple[int, float]], float]:
    """Preprocess `cases` tiny phantoms after a 2-case warm-up; returns (cases staged or published, RSS MiB)
    samples taken during the run, and the RSS after it."""
    dataset = write_phantom_dataset(root / "phantoms", "brain", cases, shape=MEMORY_SHAPE)
    warmup = write_phantom_dataset(root / "warmup", "brain", 2, shape=MEMORY_SHAPE)
    workdir, store = root / "work", root / "memory.zarr"
    flow = preprocess_flow.with_options(task_runner=make_task_runner(None, workers))
    flow(str(warmup), str(root / "warmup.zarr"), None, None, str(workdir))
    print(f"  memory: RSS before the run {rss() / MIB:.0f} MiB", flush=True)
    with Watcher(store, interval=0.25) as watcher:
        summary = flow(str(dataset), str(store), None, None, str(workdir))
    if summary["published"] != cases:
        raise SystemExit(f"memory run published {summary['published']} of {cases} cases: {summary['quarantine'][:3]}")
    return [(items, mib) for _, items, mib in watcher.samples], rss() / MIB


def rss_at(samples: list[tuple[int, float]], count: int) -> float:
    """The RSS sampled when `count` cases were first done (staged or published)."""
    return next((mib for done, mib in samples if done >= count), samples[-1][1])


def print_speedups(timings: list[Timing]) -> None:
    print(
        f"\n{'part':<11} {'runner':<18} {'workers':>7} {'seconds':>8} {'speed-up':>9} {'efficiency':>10}"
        f" | {'steady/s':>8} {'speed-up':>9} {'efficiency':>10}"
    )
    for timing in timings:
        base = next(t for t in timings if (t.part, t.runner) == (timing.part, timing.runner) and t.workers == 1)
        speedup = base.seconds / timing.seconds
        steady = timing.steady_rate / base.steady_rate
        print(
            f"{timing.part:<11} {timing.runner:<18} {timing.workers:>7} {timing.seconds:>8.1f} "
            f"{speedup:>9.2f} {speedup / timing.workers:>10.2f} | {timing.steady_rate:>8.2f} "
            f"{steady:>9.2f} {steady / timing.workers:>10.2f}"
        )
    print(
        f"target parallel efficiency (speed-up / workers): {TARGET_EFFICIENCY}; left: end to end (cluster start-up,"
        " worker imports, contracts and MLflow included); right: steady rate between the first and last item written"
    )


def print_memory(samples: list[tuple[int, float]], final: float, cases: int) -> None:
    marks = sorted({mark for mark in (cases // 4, cases // 2, 3 * cases // 4, cases) if mark > 0})
    print(f"\nmemory over {cases} phantoms of shape {MEMORY_SHAPE}, default runner (RSS of this process, MiB)")
    for mark in marks:
        print(f"  after {mark:>4} cases: {rss_at(samples, mark):8.1f} MiB")
    first = marks[0]
    growth = (rss_at(samples, cases) - rss_at(samples, first)) / max(cases - first, 1) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  after the flow returned (contracts, manifest, MLflow): {final:8.1f} MiB")
    print(f"  growth from {first} to {cases} cases: {growth:.1f} KiB per case")
    print(f"  peak RSS of this process over the whole benchmark (getrusage): {peak:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["preprocess", "sampling", "memory", "all"], default="all")
    parser.add_argument("--cases", type=int, default=200, help="tiny phantoms for the memory part")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (1 first)")
    parser.add_argument("--preprocess-cases", type=int, default=32, help="phantoms to preprocess")
    parser.add_argument(
        "--preprocess-shape",
        type=lambda text: tuple(int(size) for size in text.split("x")),
        default=BRATS_SHAPE,
        help="phantom shape XxYxZ for the preprocessing part (default 240x240x155, a BraTS case)",
    )
    parser.add_argument("--workdir", type=Path, help="trained work directory (gem3d run) for the sampling part")
    parser.add_argument("--volumes", type=int, default=8, help="volumes to sample per run")
    parser.add_argument("--volumes-per-batch", type=int, default=1, help="volumes per sampling task")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch thread budget of this process, which the flows split between its threaded workers (default 1:"
        " one core per worker, as in each process worker, where Dask sets OMP_NUM_THREADS=1, so 1 -> N workers"
        " measures the fan-out alone; 0 keeps torch's default, all cores, where one worker already fills the CPU)",
    )
    args = parser.parse_args()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    if args.workers[0] != 1:
        parser.error("--workers must start with 1 (the baseline)")
    parts = ["preprocess", "sampling", "memory"] if args.part == "all" else [args.part]
    if "sampling" in parts and args.workdir is None:
        if args.part == "sampling":
            parser.error("the sampling part needs --workdir")
        print("no --workdir: skipping the sampling part")
        parts.remove("sampling")

    from prefect.testing.utilities import prefect_test_harness

    print(
        f"machine: {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"load average {os.getloadavg()[0]:.1f}; torch threads in this process {torch.get_num_threads()}"
    )
    timings: list[Timing] = []
    memory: tuple[list[tuple[int, float]], float] | None = None
    harness = prefect_test_harness(server_startup_timeout=180)
    with tempfile.TemporaryDirectory(prefix="gem3d-scaling-") as folder, harness:
        root = Path(folder)
        if "preprocess" in parts:
            timings += preprocess_part(root / "preprocess", args.preprocess_cases, args.preprocess_shape, args.workers)
        if "sampling" in parts:
            timings += sampling_part(
                root / "sampling", args.workdir.resolve(), args.volumes, args.volumes_per_batch, args.workers
            )
        if "memory" in parts:
            memory = memory_part(root / "memory", args.cases, max(args.workers))
    if timings:
        print_speedups(timings)
    if memory is not None:
        print_memory(*memory, args.cases)


if __name__ == "__main__":
    main()
