"""Wall time of the whole pipeline (`gem3d run`) on the tiny preset, first run and an unchanged rerun.

Target: the first run under 10 minutes on a 2-core CPU; the rerun trains and samples nothing. Prints both
times, the ratio of the first run to the 10-minute budget, and the rerun's share of the first run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = os.environ | {"PREFECT_HOME": str(Path(folder) / "prefect")}
        first = timed_run(Path(folder) / "work", args.config, env)
        second = timed_run(Path(folder) / "work", args.config, env)
    print(f"cores: {os.cpu_count()}, config: {args.config or 'tiny'}")
    print(f"first run:     {first:7.1f} s  ({first / BUDGET_SECONDS:.2f} of the 10-minute budget)")
    print(f"unchanged run: {second:7.1f} s  ({second / first:.2f} of the first run; no training or sampling)")


if __name__ == "__main__":
    main()
