"""Evaluation flow: does the synthetic data look right, hold together in 3D, and help?

The story: regenerate the held-out test cases from their own mask and informed slice (GEM-3D with and
without overlapped inpainting, and the baseline), score them against the truth; score every enhancement
setting for seams, diversity and distribution distance; train a segmentation network on real and on real
plus synthetic data; render one self-contained HTML report and log it all to MLflow.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
from prefect import flow, get_run_logger

from gem3d.checkpoints import read_bundle_meta
from gem3d.config import Config, config_hash, load_config
from gem3d.evaluation import (
    distribution_distance,
    feature_extractor_for,
    slice_profile,
    summarise_setting,
    window_boundaries,
)
from gem3d.lineage import derive_id, format_chain, provenance, sha256_file
from gem3d.report import Figure, LineageEntry, ReportInputs, SettingSummary, render_report
from gem3d.segmentation import compare_real_vs_augmented
from gem3d.store import manifest_digest, read_case, read_manifest, store_attributes, write_json_atomic
from gem3d.synthesis import SynthesisPlan, plan_test_regeneration
from gem3d.synthetic_store import list_synthetic, read_synthetic, synthetic_attributes
from gem3d.views import orthogonal_views, save_png, side_by_side, slice_grid
from tasks.synthesis import SynthesisContext, run_synthesis, synthesis_context
from tasks.tracking import tracked_run

ENHANCEMENT_ORDER = ("ic", "icma", "ig", "igma")
EVALUATION_RECORD = "evaluation.json"


def _boundaries(plan: SynthesisPlan, num_slices: int, config: Config) -> list[int]:
    sampling = config.sampling
    return window_boundaries(
        num_slices, plan.start_slice, config.data.window_length, sampling.overlap, sampling.directions
    )


def _regenerate(step: str, test_ids: list[str], context: SynthesisContext, out: Path) -> list[SynthesisPlan]:
    """Test cases from their own mask and informed slice (the paper's test setting), into `out`."""
    config = context.config
    plans = plan_test_regeneration(
        context.store, test_ids, config, context.weights_sha256, context.config_hash, base_seed=config.seed
    )
    run_synthesis(step, plans, context, out)
    return plans


def _test_setting(
    name: str, plans: list[SynthesisPlan], out: Path, truths: dict[str, np.ndarray], config: Config, **extra
) -> tuple[SettingSummary, list[np.ndarray]]:
    volumes = [read_synthetic(out, plan.synthetic_id)[0] for plan in plans]
    summary = summarise_setting(
        name,
        volumes,
        [plan.source_case_id for plan in plans],
        [_boundaries(plan, len(volume), config) for plan, volume in zip(plans, volumes, strict=True)],
        truths=[truths[plan.source_case_id] for plan in plans],
        **extra,
    )
    return summary, volumes


@flow(name="evaluate")
def evaluate_flow(
    store: str,
    synthetic: str,
    out: str,
    config_path: str | None = None,
    workdir: str | None = None,
    feature_extractor: str | None = None,
) -> dict:
    """Evaluate the synthetic store against the real one and write `out/report.html`."""
    logger = get_run_logger()
    config = load_config(config_path)
    store_path, synthetic_path, out_path = Path(store).resolve(), Path(synthetic).resolve(), Path(out).resolve()
    workdir_path = Path(workdir).resolve() if workdir else store_path.parent
    models_dir = workdir_path / "models"
    key = evaluation_key(store_path, synthetic_path, models_dir, config, feature_extractor)
    previous = _previous_evaluation(out_path, key)
    if previous is not None:
        logger.info("inputs unchanged (%s): report %s reused", key, previous["report"])
        return previous | {"skipped": True}
    evaluation_store = workdir_path / "evaluation.zarr"
    manifest = read_manifest(store_path)
    split = dict(zip(manifest["case_id"], manifest["split"], strict=True))
    test_ids = sorted(case for case, name in split.items() if name == "test") or sorted(
        case for case, name in split.items() if name == "val"
    )
    train_ids = sorted(case for case, name in split.items() if name in ("train", "val") and case not in test_ids)
    real = {case: read_case(store_path, case) for case in manifest["case_id"]}
    truths = {case: real[case][0] for case in test_ids}
    labels = store_attributes(store_path).get("labels", {})
    num_classes = max(len(labels), 2)

    # Fidelity on held-out cases: GEM-3D (with and without overlapped inpainting) and the baseline.
    no_overlap = config.model_copy(
        update={"sampling": config.sampling.model_copy(update={"overlapped_inpainting": False})}
    )
    gem3d_context = synthesis_context(store, config, str(workdir_path))
    gem3d_plans = _regenerate("evaluate-test", test_ids, gem3d_context, evaluation_store)
    ablation_context = replace(gem3d_context, config=no_overlap)
    ablation_plans = _regenerate("evaluate-test-no-oi", test_ids, ablation_context, evaluation_store)
    baseline = synthesis_context(store, config, str(workdir_path), "baseline")
    baseline_plans = _regenerate("evaluate-test-baseline", test_ids, baseline, evaluation_store)
    ablation = [
        (
            read_synthetic(evaluation_store, plan.synthetic_id)[0],
            _boundaries(plan, len(truths[plan.source_case_id]), config),
        )
        for plan in ablation_plans
    ]
    gem3d_summary, gem3d_volumes = _test_setting(
        "GEM-3D (test cases, own informed slice)",
        gem3d_plans,
        evaluation_store,
        truths,
        config,
        boundaries_without_overlap=ablation,
    )
    baseline_summary, _ = _test_setting(
        "baseline (no informed slice)", baseline_plans, evaluation_store, truths, config
    )

    # Enhancement settings in the synthetic store.
    extractor = feature_extractor_for(
        [real[case] for case in train_ids], num_classes, config.seed, config.evaluation.feature_steps
    )
    if feature_extractor:
        from gem3d.features import load_torchscript_extractor

        extractor = load_torchscript_extractor(feature_extractor)
    real_test_images = [truths[case] for case in test_ids]
    by_setting: dict[str, list[str]] = {}
    for synthetic_id in list_synthetic(synthetic_path):
        by_setting.setdefault(synthetic_attributes(synthetic_path, synthetic_id)["setting"], []).append(synthetic_id)
    summaries = [gem3d_summary, baseline_summary]
    views, grids, profiles, lineage_entries = [], [], [], []
    synthetic_pairs, synthetic_sources = [], []
    for setting in [name for name in ENHANCEMENT_ORDER if name in by_setting] + sorted(
        set(by_setting) - set(ENHANCEMENT_ORDER)
    ):
        volumes, sources, boundaries = [], [], []
        for synthetic_id in by_setting[setting]:
            image, mask, record = read_synthetic(synthetic_path, synthetic_id)
            plan = SynthesisPlan.model_validate(synthetic_attributes(synthetic_path, synthetic_id)["plan"])
            volumes.append(image)
            sources.append(record.source_case_id)
            boundaries.append(_boundaries(plan, len(image), config))
            if record.source_case_id in train_ids:
                synthetic_pairs.append((image, mask))
                synthetic_sources.append(train_ids.index(record.source_case_id))
            if len(lineage_entries) < config.evaluation.lineage_entries:
                lineage_entries.append(LineageEntry(synthetic_id, format_chain(record)))
        distance = distribution_distance(extractor, real_test_images + [real[c][0] for c in train_ids], volumes)
        summaries.append(summarise_setting(setting, volumes, sources, boundaries, distance))
        source = sources[0]
        real_image, real_label = real[source]
        first_mask = read_synthetic(synthetic_path, by_setting[setting][0])[1]
        views.append(
            Figure(
                f"{setting}: real vs synthetic",
                side_by_side(real_image, volumes[0], first_mask),
                f"{source} (left) and {by_setting[setting][0]} (right), mask outline in colour",
            )
        )
        grids.append(Figure(f"{setting}: slice grid", slice_grid(volumes[0], mask=first_mask), by_setting[setting][0]))
        profiles.append(slice_profile(f"{setting}: {source}", real_image, volumes[0], boundaries[0]))
    real_summary = summarise_setting(
        "real-only",
        [real[c][0] for c in test_ids],
        test_ids,
        [[] for _ in test_ids],
        distribution_distance(extractor, [real[c][0] for c in train_ids], real_test_images),
    )
    summaries.append(real_summary)
    if gem3d_volumes:
        case = gem3d_plans[0].source_case_id
        views.insert(
            0,
            Figure(
                "test case regenerated (GEM-3D)",
                side_by_side(truths[case], gem3d_volumes[0], real[case][1]),
                f"{case}: truth (left) and regenerated from its own mask and informed slice (right)",
            ),
        )
        views.append(Figure(f"real {case}", orthogonal_views(truths[case], real[case][1]), "axial, coronal, sagittal"))

    # Usefulness: segmentation trained on real vs real + synthetic, all and scarce real data.
    dice_rows = (
        compare_real_vs_augmented(
            [real[c] for c in train_ids],
            synthetic_pairs,
            [real[c] for c in test_ids],
            num_classes,
            config.evaluation.segmentation_steps,
            config.seed,
            config.evaluation.scarce_fraction,
            synthetic_sources,
        )
        if synthetic_pairs
        else []
    )

    origin = provenance(config)
    inputs = ReportInputs(
        title="gem3d evaluation",
        config_hash=origin["config_hash"],
        run_info={
            **{name.replace("_", " "): str(value) for name, value in origin.items() if name != "config_hash"},
            "real store": str(store_path),
            "synthetic store": str(synthetic_path),
            "test cases": ", ".join(test_ids),
            "training cases": str(len(train_ids)),
            "synthetic volumes": str(sum(len(ids) for ids in by_setting.values())),
        },
        settings=summaries,
        feature_description=extractor.describe(),
        orthogonal_views=views,
        slice_grids=grids,
        profiles=profiles,
        dice_rows=dice_rows,
        label_names={int(k): v for k, v in labels.items()},
        lineage=lineage_entries,
    )
    report = render_report(out_path, inputs)
    for index, figure in enumerate(views + grids):
        save_png(figure.image, out_path / "figures" / f"{index:02d}.png")
    metrics = _headline_metrics(summaries, dice_rows)
    with tracked_run("evaluate", workdir_path, config):
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(report), artifact_path="report")
        mlflow.log_artifacts(str(out_path / "figures"), artifact_path="report/figures")
    logger.info("report written to %s", report)
    outcome = {"report": str(report), "metrics": metrics, "evaluation_key": key, "provenance": origin}
    write_json_atomic(out_path / EVALUATION_RECORD, outcome)
    return outcome | {"skipped": False}


def evaluation_key(
    store: Path, synthetic: Path, models_dir: Path, config: Config, feature_extractor: str | None
) -> str:
    """What the report depends on: config, real data, synthetic volumes, models and the feature extractor."""
    return derive_id(
        "eval",
        config=config_hash(config),
        manifest=manifest_digest(store),
        synthetic=list_synthetic(synthetic),
        models={role: read_bundle_meta(models_dir / role)["sha256"] for role in ("stage2", "baseline")},
        feature_extractor=sha256_file(feature_extractor) if feature_extractor else None,
    )


def _previous_evaluation(out: Path, key: str) -> dict | None:
    record = out / EVALUATION_RECORD
    if not record.exists():
        return None
    previous = json.loads(record.read_text())
    return previous if previous.get("evaluation_key") == key and Path(previous["report"]).exists() else None


def _headline_metrics(summaries: list[SettingSummary], dice_rows: list[dict]) -> dict[str, float]:
    """Flat MLflow metrics: mean of each per-volume metric per setting, and Dice per arm."""
    metrics: dict[str, float] = {}
    for summary in summaries:
        key = summary.setting.split(" ")[0].lower().replace("-", "")
        for name in ("psnr", "ssim", "ms_ssim", "seam_overlap", "seam_no_overlap", "diversity"):
            values = getattr(summary, name)
            if len(values):
                metrics[f"{key}.{name}"] = float(np.mean(values))
        for name in ("frechet", "mmd"):
            if getattr(summary, name) is not None:
                metrics[f"{key}.{name}"] = float(getattr(summary, name))
    for row in dice_rows:
        if not np.isnan(row["dice"]):
            metrics[f"dice.{row['setting'].replace('+', '_plus_')}.{row['amount']}.label{row['label']}"] = row["dice"]
    return metrics
