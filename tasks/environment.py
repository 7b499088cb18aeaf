"""Offline, quiet defaults for Prefect, MLflow and Great Expectations, applied before any of them is imported.

Only unset variables are filled in, so a user's own server, tracking URI or folders always win. What the tools
keep between runs (Prefect's local API database, matplotlib's font cache) goes to one gem3d cache folder,
created with its parents, so a machine with a new, empty or even missing home directory runs as well.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import warnings
from pathlib import Path

OFFLINE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    "GX_ANALYTICS_ENABLED": "False",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # A tracking server that goes away mid-run fails the step within seconds when refused (two minutes at most
    # when nothing answers), not after MLflow's default seven retries with doubling back-off (minutes per call).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "DO_NOT_TRACK": "1",
    "TQDM_DISABLE": "1",
    "DASK_LOGGING__DISTRIBUTED": "warning",
    "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning",
}

CACHE_VARIABLE = "GEM3D_CACHE_DIR"
# Prefect keeps its local API database here; matplotlib (imported by MONAI, never drawn with) its font cache.
CACHE_FOLDERS = {"PREFECT_HOME": "prefect", "MPLCONFIGDIR": "matplotlib"}


def _writable_folder(folder: Path) -> Path | None:
    """`folder` created with its parents and proven writable by a probe file, else None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return None
    return folder


def _named_cache() -> Path | None:
    """The cache the environment names: GEM3D_CACHE_DIR, else $XDG_CACHE_HOME/gem3d, else ~/.cache/gem3d."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "gem3d"
    try:
        return Path.home() / ".cache" / "gem3d"
    except (KeyError, RuntimeError):
        return None


def _shared_temporary_cache() -> Path | None:
    """`gem3d-cache-<uid>` in the temporary folder, private to this user and reused across runs; else None."""
    user = os.getuid() if hasattr(os, "getuid") else None
    shared = Path(tempfile.gettempdir()) / f"gem3d-cache-{user if user is not None else 'user'}"
    try:
        shared.mkdir(mode=0o700, exist_ok=True)
        status = shared.lstat()
    except OSError:
        return None
    foreign = user is not None and (status.st_uid != user or status.st_mode & 0o077)
    if not stat.S_ISDIR(status.st_mode) or foreign:
        return None
    return _writable_folder(shared)


def cache_dir() -> Path:
    """gem3d's cache folder, created with its parents; a private temporary one when that place is unwritable."""
    named = _named_cache()
    chosen = (_writable_folder(named) if named is not None else None) or _shared_temporary_cache()
    return chosen or Path(tempfile.mkdtemp(prefix="gem3d-cache-"))


def apply_cache_folders() -> Path | None:
    """Point each unset tool folder variable (PREFECT_HOME, MPLCONFIGDIR) at a new folder in the gem3d cache.

    Returns the cache folder, or None when the user set every variable and no cache was needed.
    """
    unset = [name for name in CACHE_FOLDERS if not os.environ.get(name)]
    if not unset:
        return None
    cache = cache_dir()
    for name in unset:
        folder = cache / CACHE_FOLDERS[name]
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    return cache


def apply_offline_defaults() -> None:
    """Fill in the offline defaults and writable tool folders; quiet GX's info logs and MLflow's hints."""
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)
    apply_cache_folders()
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")
