"""Prefect tasks for synthesis: generate a batch of planned volumes, gate them with the synthetic contract,
publish what passes and quarantine the rest; plus the fan-out over a Dask cluster that skips finished ids.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import pandas as pd
from prefect import get_run_logger, runtime, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from data_contracts import synthetic_contract
from gem3d.checkpoints import SPEC_FILE, read_bundle_meta
from gem3d.config import Config, config_hash, load_config
from gem3d.label_intensity import real_label_mean_ranges
from gem3d.reproduce import generation_record
from gem3d.synthesis import LoadedModels, SynthesisPlan, SyntheticVolume, load_models, synthesize
from gem3d.synthetic_store import (
    LINEAGE_DIGEST,
    quarantine,
    read_lineage_digest,
    rebuild_lineage_table,
    synthetic_exists,
    synthetic_row,
    synthetic_writer,
    write_synthetic,
)
from tasks.progress import ProgressReporter
from tasks.runners import share_torch_threads
from tasks.tracking import tracked_run


@dataclass(frozen=True)
class SynthesisContext:
    """What every synthesis step resolves first: config, real store, work folder and the denoiser's weights."""

    config: Config
    store: Path
    workdir: Path
    role: str
    weights_sha256: str

    @property
    def models_dir(self) -> Path:
        return self.workdir / "models"

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


def synthesis_context(
    store: str, config: str | Config | None, workdir: str | None, role: str = "stage2"
) -> SynthesisContext:
    """Resolve paths (the work folder defaults to the store's parent) and read the trained bundle's hash."""
    loaded = config if isinstance(config, Config) else load_config(config)
    store_path = Path(store).resolve()
    workdir_path = Path(workdir).resolve() if workdir else store_path.parent
    weights = read_bundle_meta(workdir_path / "models" / role)["sha256"]
    return SynthesisContext(loaded, store_path, workdir_path, role, weights)


MODEL_CACHE_SIZE = 4
_loaded: OrderedDict[tuple, LoadedModels] = OrderedDict()
_loading = threading.Lock()


def _bundle_weights(models_dir: Path, role: str, weights_sha256: str) -> tuple[tuple[str, str], ...]:
    """(role, sha256) of every bundle `load_models` reads: the denoiser and, when present, codec and generator."""
    extra = [
        (other, read_bundle_meta(models_dir / other)["sha256"])
        for other in ("autoencoder", "slicegen")
        if (models_dir / other / SPEC_FILE).exists()
    ]
    return ((role, weights_sha256), *extra)


def cached_models(models_dir: Path, role: str, config: Config, weights_sha256: str) -> LoadedModels:
    """The loaded models for these weights, device and codec; configs differing only in sampling share them.

    Keyed by the weights' sha256 rather than the whole config, so the evaluation's ablation (same weights,
    no overlapped inpainting) does not hold a second copy of the same networks in (GPU) memory.
    """
    key = (
        str(models_dir),
        role,
        _bundle_weights(Path(models_dir), role, weights_sha256),
        config.train.device,
        config.autoencoder.model_dump_json(),
    )
    with _loading:  # one load per key even when batch tasks of one worker start together
        if key not in _loaded:
            _loaded[key] = load_models(models_dir, config, role=role)
            while len(_loaded) > MODEL_CACHE_SIZE:
                _loaded.popitem(last=False)
        _loaded.move_to_end(key)
        return _loaded[key]


def flow_run_origin() -> dict[str, str | None]:
    """The root flow run above the current one (itself when it has no parent) and the deployment that started
    it (None outside a deployment), so each published volume leads back to the scheduled run that made it."""
    root, deployment = runtime.flow_run.root_flow_run_id, runtime.deployment.id
    return {
        "root_flow_run_id": None if root is None else str(root),
        "deployment_id": None if deployment is None else str(deployment),
    }


def with_origin(volume: SyntheticVolume, origin: dict[str, str | None]) -> SyntheticVolume:
    """The volume with its lineage record naming the root flow run and deployment of `origin`."""
    return replace(volume, lineage=volume.lineage.model_copy(update=origin))


@task(
    name="synthesize-batch",
    task_run_name="synthesize-{plans[0].synthetic_id}+{batch_size}",
    cache_policy=NO_CACHE,
    retries=1,
)
def synthesize_batch_task(
    plans: list[SynthesisPlan],
    batch_size: int,
    store: Path,
    models_dir: Path,
    role: str,
    weights_sha256: str,
    config: Config,
    out: Path,
) -> dict:
    """Generate `plans` (one network batch), validate each volume, publish the good ones atomically."""
    logger = get_run_logger()
    models = cached_models(models_dir, role, config, weights_sha256)
    invalid: list[dict] = []

    def refuse(plan: SynthesisPlan, error: Exception) -> None:
        quarantine(out, plan.synthetic_id, f"invalid edited mask: {error}")
        invalid.append({"synthetic_id": plan.synthetic_id, "reason": str(error)})

    volumes = synthesize(plans, store, models, config, on_invalid=refuse)
    if not volumes:
        return {"written": [], "quarantined": invalid}
    rows = pd.DataFrame([synthetic_row(volume) for volume in volumes])
    result = synthetic_contract(rows, label_mean_ranges=real_label_mean_ranges(store), limits=config.synthetic_contract)
    failed = set(result.failed_case_ids)
    for failure in result.failures:
        if failure.get("case_id") in failed:
            quarantine(out, failure["case_id"], failure["reason"])
    origin = flow_run_origin()
    written = write_synthetic(
        out,
        [with_origin(v, origin) for v in volumes if v.plan.synthetic_id not in failed],
        flow_run_id=str(runtime.flow_run.id),
        generation=generation_record(config, store, models_dir, role),
    )
    quarantined = invalid + [{"synthetic_id": i, "reason": "synthetic contract failed"} for i in sorted(failed)]
    logger.info("published %d volumes, quarantined %d", len(written), len(quarantined))
    return {"written": written, "quarantined": quarantined}


def fan_out_synthesis(
    plans: Sequence[SynthesisPlan], context: SynthesisContext, out: Path, step: str = "synthesis"
) -> dict:
    """Map the batch task over the plans not yet published; a rerun after a crash does only what is missing.

    Several writers (processes, machines) may share `out`: each registers as one, and leftovers of a killed
    run's staging area are removed only by a writer that finds itself alone (`synthetic_writer`); a volume
    another writer publishes first is skipped at publication.
    """
    todo = [plan for plan in plans if not synthetic_exists(out, plan.synthetic_id)]
    size = context.config.sampling.volumes_per_batch
    batches = [todo[first : first + size] for first in range(0, len(todo), size)]
    with synthetic_writer(out), share_torch_threads():
        futures = synthesize_batch_task.map(
            batches,
            [len(batch) for batch in batches],
            unmapped(context.store),
            unmapped(context.models_dir),
            unmapped(context.role),
            unmapped(context.weights_sha256),
            unmapped(context.config),
            unmapped(out),
        )
        outcomes = _results_with_progress(futures, batches, f"sampling {step}")
    return {
        "planned": len(plans),
        "skipped": len(plans) - len(todo),
        "written": [i for outcome in outcomes for i in outcome["written"]],
        "quarantined": [q for outcome in outcomes for q in outcome["quarantined"]],
    }


def _results_with_progress(futures: list, batches: list[list[SynthesisPlan]], description: str) -> list[dict]:
    """The batch results in batch order, reporting volumes done as batches finish in whatever order they do."""
    results: dict[int, dict] = {}
    index_of = {id(future): index for index, future in enumerate(futures)}
    with ProgressReporter(description, sum(len(batch) for batch in batches), "volumes") as progress:
        for future in as_completed(futures):
            index = index_of[id(future)]
            results[index] = future.result()
            progress.update(sum(len(batches[done]) for done in results))
    return [results[index] for index in range(len(futures))]


def log_lineage_digest(out: Path) -> str | None:
    """Record the rebuilt lineage table's digest in the active MLflow run (a param: it cannot be changed later).

    `gem3d audit SYNTH --expected-digest <lineage_digest>` then proves the table against it.
    """
    recorded = read_lineage_digest(out)
    if recorded is None:
        return None
    mlflow.log_param("lineage_digest", recorded["table_digest"])
    mlflow.log_artifact(str(out / LINEAGE_DIGEST), artifact_path="lineage")
    return recorded["table_digest"]


def run_synthesis(step: str, plans: Sequence[SynthesisPlan], context: SynthesisContext, out: str | Path) -> dict:
    """Fan out, rebuild the lineage table, and record the step in MLflow (counts, lineage table and digest)."""
    out = Path(out).resolve()
    with tracked_run(step, context.workdir, context.config, tags={"gem3d.synthetic_store": str(out)}) as run_id:
        outcome = fan_out_synthesis(plans, context, out, step)
        lineage_path = rebuild_lineage_table(out)
        mlflow.log_metrics(
            {
                "planned": outcome["planned"],
                "written": len(outcome["written"]),
                "skipped": outcome["skipped"],
                "quarantined": len(outcome["quarantined"]),
            }
        )
        digest = log_lineage_digest(out)
        if lineage_path.exists():
            mlflow.log_artifact(str(lineage_path), artifact_path="lineage")
    return outcome | {"mlflow_run_id": run_id, "out": str(out), "lineage": str(lineage_path), "lineage_digest": digest}
