"""Wall time and reproducibility of the whole pipeline (`gem3d run`) on the tiny preset.

Three runs from a fresh Prefect home: a first run, an unchanged rerun in the same work folder (target: trains
and samples nothing), and a second first run in a fresh work folder. Prints the first run against the
10-minute budget on a 2-core CPU, the rerun's share of it, and whether the fresh run's synthetic volumes are
bit-identical to the first run's (same inputs, config and seed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gem3d.synthetic_store import volume_digests

BUDGET_SECONDS = 600


def timed_run(workdir: Path, config: str | None, env: dict) -> float:
    command = [sys.executable, "-c", "from flows.cli import app; app()", "run", "--workdir", str(workdir)]
    if config:
        command += ["--config", config]
    began = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="config file or preset (default: tiny)")
    parser.add_argument("--skip-fresh", action="store_true", help="leave out the third run (reproducibility)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        env = os.environ | {"PREFECT_HOME": str(root / "prefect")}
        first = timed_run(root / "work", args.config, env)
        second = timed_run(root / "work", args.config, env)
        print(f"cores: {os.cpu_count()}, config: {args.config or 'tiny'}")
        print(f"first run:     {first:7.1f} s  ({first / BUDGET_SECONDS:.2f} of the 10-minute budget)")
        print(f"unchanged run: {second:7.1f} s  ({second / first:.2f} of the first run; no training or sampling)")
        if args.skip_fresh:
            return
        fresh = timed_run(root / "fresh", args.config, env)
        expected = volume_digests(root / "work" / "synthetic.zarr")
        found = volume_digests(root / "fresh" / "synthetic.zarr")
        same = sum(found.get(key) == digest for key, digest in expected.items())
        print(f"fresh folder:  {fresh:7.1f} s  ({fresh / first:.2f} of the first run)")
        print(
            f"bit-identical synthetic volumes: {same} of {len(expected)} "
            f"({'reproduced' if same == len(expected) == len(found) else 'NOT reproduced'})"
        )


if __name__ == "__main__":
    main()
