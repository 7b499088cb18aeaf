"""MLflow tracking for every step: a local sqlite store under the work directory unless the user says otherwise."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from gem3d.config import Config
from gem3d.lineage import provenance

EXPERIMENT = "gem3d"
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
HEALTH_TIMEOUT_SECONDS = 5.0


class TrackingServerUnavailable(RuntimeError):
    """The MLflow tracking server named by `MLFLOW_TRACKING_URI` does not answer."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        super().__init__(
            f"MLflow tracking server {uri} does not answer ({reason}); start it, or unset MLFLOW_TRACKING_URI "
            "to track into the work folder"
        )


def tracking_uri(workdir: str | Path) -> str:
    """The user's `MLFLOW_TRACKING_URI` when set, else a sqlite file in the work directory.

    Read once at import: `mlflow.set_tracking_uri` itself writes that variable, so a later read would see ours.
    """
    return USER_TRACKING_URI or f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def check_tracking_server(uri: str | None = USER_TRACKING_URI, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
    """For an http(s) tracking URI, ask the server's `/health` within `timeout` seconds; raise
    `TrackingServerUnavailable` when nothing answers (or a proxy says the server behind it is down).

    Called before any work: MLflow's own client retries for minutes and only once work is done.
    """
    if not uri or not uri.lower().startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        if error.code < 500:  # it answers (an auth proxy, say): MLflow's client takes it from here
            return
        reason = f"HTTP {error.code} {error.reason}"
    except (urllib.error.URLError, OSError) as error:
        reason = str(getattr(error, "reason", error))
    raise TrackingServerUnavailable(uri, reason)


def use_tracking(workdir: str | Path) -> str:
    """Point MLflow at the work directory's store (or the user's server) and make sure the experiment exists.

    A local store keeps artefacts in the work folder; a tracking server keeps them where the server says (its
    artifact store, served over HTTP), so that every machine of a team can read them back.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(workdir)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        served = uri.lower().startswith(("http://", "https://"))
        mlflow.create_experiment(EXPERIMENT, artifact_location=None if served else (workdir / "mlartifacts").as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return uri


def flatten(payload: dict, prefix: str = "") -> dict[str, str]:
    """Nested config dict -> flat `section.key` params (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


@contextmanager
def tracked_run(name: str, workdir: str | Path, config: Config, tags: dict | None = None) -> Iterator[str]:
    """An MLflow run (nested when one is active) with the full config as params; yields its run id."""
    use_tracking(workdir)
    nested = mlflow.active_run() is not None
    origin = provenance(config)
    run_tags = {
        "gem3d.config_hash": origin["config_hash"],
        "gem3d.seed": str(origin["seed"]),
        "gem3d.package_version": origin["package_version"],
        "mlflow.source.git.commit": origin["git_commit"],
        "gem3d.step": name,
        **(tags or {}),
    }
    with mlflow.start_run(run_name=name, nested=nested, tags=run_tags) as run:
        mlflow.log_params(flatten(config.model_dump(mode="json")))
        yield run.info.run_id
