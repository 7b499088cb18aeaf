"""The evaluation, start to end, on a real store, a synthetic store and the trained models' folder.

Reads one case or one synthetic volume at a time and keeps running statistics, so memory does not grow with
the number of cases: fidelity of test cases regenerated from their own mask and informed slice (GEM-3D, its
ablation without overlapped inpainting, the baseline), seams, diversity and distribution distance of every
enhancement setting in the synthetic store (current volumes only), and the segmentation comparison.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gem3d.anatomy import ABLATION_MODELS, outlined_label, without_outline
from gem3d.checkpoints import read_bundle_meta
from gem3d.config import Config, config_hash
from gem3d.evaluation.results import EvaluationResult, Figure, LineageEntry, SettingSummary, SliceProfile
from gem3d.evaluation.scores import FeatureStream, SettingScores, slice_profile
from gem3d.evaluation.selection import (
    CurrentGeneration,
    StoredSynthetic,
    recorded_boundaries,
    select_current,
    usable_for_training,
)
from gem3d.features import FeatureExtractor, load_torchscript_extractor, train_feature_extractor_on
from gem3d.lineage import derive_id, format_chain, sha256_file
from gem3d.segmentation import compare_real_vs_augmented
from gem3d.splits import store_cases_of_split, store_splits
from gem3d.store import manifest_digest, open_case_arrays, open_case_outline, read_case, store_attributes
from gem3d.synthesis import SynthesisPlan, plan_test_regeneration
from gem3d.synthetic_store import list_synthetic, read_synthetic, read_synthetic_outline, synthetic_exists
from gem3d.views import orthogonal_views, side_by_side, slice_grid
from gem3d.volume_sets import StoredVolumes

ENHANCEMENT_ORDER = ("ic", "icma", "ig", "igma")
GEM3D_TITLE = "GEM-3D (test cases, own informed slice)"
NO_OVERLAP_TITLE = "no-overlap GEM-3D (ablation: no overlapped inpainting, same weights)"
NO_OUTLINE_TITLE = "no-outline GEM-3D (ablation: mask only, no anatomy outline)"
BASELINE_TITLE = "baseline (no informed slice)"
REAL_TITLE = "real test cases (at GEM-3D's window boundaries)"


@dataclass(frozen=True)
class RegenerationArm:
    """Test cases to regenerate from their own mask and informed slice with one model and config."""

    name: str
    step: str
    role: str
    config: Config
    plans: list[SynthesisPlan] = field(default_factory=list)


Regenerate = Callable[[RegenerationArm], None]
Progress = Callable[[int, int, str], None]
"""Publishes an arm's plans into the evaluation store (the caller's job: e.g. Prefect synthesis tasks)."""


def with_outline_ablation(config: Config) -> bool:
    """Whether the evaluation also scores the denoiser trained without the anatomy outline."""
    return config.evaluation.outline_ablation and config.denoiser.anatomy_outline


def regeneration_arms(store: Path, test_ids: Sequence[str], config: Config, models_dir: Path) -> list[RegenerationArm]:
    """GEM-3D, GEM-3D without overlapped inpainting (same weights) and the baseline, planned on the test cases;
    with `evaluation.outline_ablation`, also GEM-3D trained without the anatomy outline (`models/no-outline`).

    An arm's `role` is its denoiser bundle's folder relative to `models_dir`.
    """
    no_overlap = config.model_copy(
        update={"sampling": config.sampling.model_copy(update={"overlapped_inpainting": False})}
    )
    arms = [
        ("gem3d", "evaluate-test", "stage2", config),
        ("no_overlap", "evaluate-test-no-oi", "stage2", no_overlap),
        ("baseline", "evaluate-test-baseline", "baseline", config),
    ]
    if with_outline_ablation(config):
        arms.append(("no_outline", "evaluate-test-no-outline", f"{ABLATION_MODELS}/stage2", without_outline(config)))
    return [
        RegenerationArm(
            name,
            step,
            role,
            arm_config,
            plan_test_regeneration(
                store,
                test_ids,
                arm_config,
                read_bundle_meta(models_dir / role)["sha256"],
                config_hash(arm_config),
                base_seed=config.seed,
            ),
        )
        for name, step, role, arm_config in arms
    ]


def _shown_mask(label: np.ndarray, outline: np.ndarray | None, num_classes: int) -> np.ndarray:
    """What the views draw: the labels and, when known, the anatomy outline as one more contour colour."""
    return label if outline is None else outlined_label(label, outline, num_classes)


@dataclass
class _Figures:
    views: list[Figure] = field(default_factory=list)
    grids: list[Figure] = field(default_factory=list)
    profiles: list[SliceProfile] = field(default_factory=list)
    closing: list[Figure] = field(default_factory=list)


def _score_test_arms(
    store: Path, evaluation_store: Path, arms: list[RegenerationArm], figures: _Figures, num_classes: int
) -> list[SettingSummary]:
    """Fidelity and seams of the regenerated test cases, one case (truth and its three volumes) at a time.

    A case with a volume the synthesis quarantined (not published) is left out of every arm, so the arms
    compare on the same cases.
    """
    by_name = {arm.name: arm for arm in arms}
    scored = {
        "gem3d": SettingScores(GEM3D_TITLE),
        "no_overlap": SettingScores(NO_OVERLAP_TITLE),
        "baseline": SettingScores(BASELINE_TITLE),
    }
    if "no_outline" in by_name:
        scored["no_outline"] = SettingScores(NO_OUTLINE_TITLE)
    real = SettingScores(REAL_TITLE)
    names = list(by_name)
    plans = zip(*(by_name[name].plans for name in names), strict=True)
    published = [case for case in plans if all(synthetic_exists(evaluation_store, p.synthetic_id) for p in case)]
    for index, case_plans in enumerate(published):
        plan_of = dict(zip(names, case_plans, strict=True))
        gem3d_plan = plan_of["gem3d"]
        truth, label = read_case(store, gem3d_plan.source_case_id)
        volumes = {}
        for name, scores in scored.items():
            volumes[name], _, record = read_synthetic(evaluation_store, plan_of[name].synthetic_id)
            boundaries = recorded_boundaries(record, len(volumes[name]))
            scores.add_volume(volumes[name], boundaries, truth)
            if name == "gem3d":
                real.add_volume(truth, boundaries)
            elif name == "no_overlap":
                scored["gem3d"].add_ablation(volumes[name], boundaries)
        if index == 0:
            case = gem3d_plan.source_case_id
            shown = _shown_mask(label, open_case_outline(store, case)[:], num_classes)
            figures.views.append(
                Figure(
                    "test case regenerated (GEM-3D)",
                    side_by_side(truth, volumes["gem3d"], shown),
                    f"{case}: truth (top) and regenerated from its own mask and informed slice (bottom); "
                    "labels and anatomy outline in colour",
                )
            )
            if "no_outline" in volumes:
                figures.views.append(
                    Figure(
                        "outline ablation: the same test case regenerated without the anatomy outline",
                        side_by_side(truth, volumes["no_outline"], shown),
                        f"{case}: truth (top) and the denoiser trained on the mask alone (bottom)",
                    )
                )
            figures.closing.append(Figure(f"real {case}", orthogonal_views(truth, shown), "axial, coronal, sagittal"))
    return [scores.summary() for scores in scored.values()] + [real.summary()]


def _extractor(
    store: Path, train_ids: list[str], num_classes: int, config: Config, feature_extractor: str | Path | None
) -> FeatureExtractor:
    """A user-supplied TorchScript extractor, else one trained on the real training slices read per step."""
    if feature_extractor:
        return load_torchscript_extractor(feature_extractor)
    slices = StoredVolumes(store, tuple(train_ids)).slices()
    note = f"real training slices read from the store per step ({len(train_ids)} training volumes)"
    return train_feature_extractor_on(slices, num_classes, config.seed, config.evaluation.feature_steps, data_note=note)


def _real_features(
    store: Path, extractor: FeatureExtractor, test_ids: list[str], train_ids: list[str], seed: int
) -> dict[str, FeatureStream]:
    """Feature streams of the real test cases, training cases, and both (test first), one case read at a time."""
    streams = {name: FeatureStream(extractor, f"real-{name}", seed) for name in ("test", "train", "all")}
    for split, case_ids in (("test", test_ids), ("train", train_ids)):
        for case_id in case_ids:
            image = open_case_arrays(store, case_id)[0][:]
            streams[split].add(image)
            streams["all"].add(image)
    return streams


def _setting_order(volumes: list[StoredSynthetic]) -> list[str]:
    present = {volume.setting for volume in volumes}
    return [name for name in ENHANCEMENT_ORDER if name in present] + sorted(present - set(ENHANCEMENT_ORDER))


def _score_setting(
    setting: str,
    volumes: list[StoredSynthetic],
    synthetic: Path,
    store: Path,
    scores: SettingScores,
    figures: _Figures,
    num_classes: int,
) -> None:
    """One setting's volumes, grouped by source mask (only one group's variants held at a time)."""
    by_source: dict[str, list[str]] = defaultdict(list)
    for volume in volumes:
        by_source[volume.source_case_id].append(volume.synthetic_id)
    for source_index, (source, synthetic_ids) in enumerate(by_source.items()):
        variants = []
        for synthetic_id in synthetic_ids:
            image, mask, record = read_synthetic(synthetic, synthetic_id)
            boundaries = recorded_boundaries(record, len(image))
            scores.add_volume(image, boundaries)
            variants.append(image)
            if source_index == 0 and len(variants) == 1:
                real_image, _ = read_case(store, source)
                shown = _shown_mask(mask, read_synthetic_outline(synthetic, synthetic_id), num_classes)
                figures.views.append(
                    Figure(
                        f"{setting}: real vs synthetic",
                        side_by_side(real_image, image, shown),
                        f"{source} (top) and {synthetic_id} (bottom); its edited mask and anatomy outline in colour",
                    )
                )
                figures.grids.append(Figure(f"{setting}: slice grid", slice_grid(image, mask=shown), synthetic_id))
                figures.profiles.append(slice_profile(f"{setting}: {source}", real_image, image, boundaries))
        scores.add_variants(variants)


class _Phases:
    """The evaluation's phases, announced to a progress callback as they start."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress = total, -1, progress

    def start(self, phase: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, phase)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total, "done")


def _lineage_entries(synthetic: Path, volumes: list[StoredSynthetic], count: int) -> list[LineageEntry]:
    entries = []
    for volume in volumes[:count]:
        _, _, record = read_synthetic(synthetic, volume.synthetic_id)
        entries.append(LineageEntry(volume.synthetic_id, format_chain(record)))
    return entries


def _test_and_training_cases(store: Path) -> tuple[list[str], list[str]]:
    """The store's test split (its validation split when there is none), and the other train and val cases."""
    test_ids = store_cases_of_split(store, "test") or store_cases_of_split(store, "val")
    return test_ids, [case for case in store_cases_of_split(store, "train", "val") if case not in test_ids]


def evaluate(
    store: str | Path,
    synthetic: str | Path,
    config: Config,
    models_dir: str | Path,
    evaluation_store: str | Path | None = None,
    regenerate: Regenerate | None = None,
    feature_extractor: str | Path | None = None,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Evaluate the current synthetic volumes of `synthetic` against the real store `store`.

    Test cases are the store's test split (its validation split when there is none); training cases are the
    other train and val cases. With `regenerate`, the test cases are first regenerated into `evaluation_store`
    (GEM-3D, no overlapped inpainting, baseline) and scored for fidelity. Volumes of `synthetic` not made by
    the current bundles in `models_dir` with the current sampler settings are left out and counted.
    `progress(done, total, phase)` is called as each phase starts and once at the end.
    """
    store, synthetic, models_dir = Path(store), Path(synthetic), Path(models_dir)
    selection = select_current(synthetic, CurrentGeneration.of(models_dir, config))
    settings = _setting_order(selection.current)
    phases = _Phases(2 * (regenerate is not None) + 2 + len(settings) + 1, progress)
    test_ids, train_ids = _test_and_training_cases(store)
    labels = store_attributes(store).get("labels", {})
    num_classes = max(len(labels), 2)
    figures = _Figures()

    summaries: list[SettingSummary] = []
    if regenerate is not None:
        if evaluation_store is None:
            raise ValueError("regenerating test cases needs an evaluation store to write them to")
        arms = regeneration_arms(store, test_ids, config, models_dir)
        phases.start("regenerating the test cases")
        for arm in arms:
            regenerate(arm)
        phases.start("scoring the regenerated test cases")
        summaries += _score_test_arms(store, Path(evaluation_store), arms, figures, num_classes)

    phases.start("training the feature network")
    extractor = _extractor(store, train_ids, num_classes, config, feature_extractor)
    phases.start("features of the real cases")
    real = _real_features(store, extractor, test_ids, train_ids, config.seed)
    ordered: list[StoredSynthetic] = []
    for setting in settings:
        phases.start(f"scoring setting {setting}")
        # grouped by source mask, the order they are scored in
        volumes = sorted((v for v in selection.current if v.setting == setting), key=lambda v: v.source_case_id)
        scores = SettingScores(setting, FeatureStream(extractor, setting, config.seed))
        _score_setting(setting, volumes, synthetic, store, scores, figures, num_classes)
        summaries.append(scores.summary(real["all"]))
        ordered += volumes
    # the real test cases' distance to the real training cases: the floor the synthetic settings compare with
    summaries.append(SettingSummary("real-only", **real["test"].distance(real["train"])))

    phases.start("segmentation: real vs real + synthetic")
    used, dice_rows = _usefulness(store, synthetic, ordered, train_ids, test_ids, num_classes, config, config.seed)
    phases.finish()
    return EvaluationResult(
        settings=summaries,
        feature_description=extractor.describe(),
        test_case_ids=test_ids,
        training_case_ids=train_ids,
        evaluated=[volume.synthetic_id for volume in ordered],
        left_out=selection.left_out,
        used_for_training=[volume.synthetic_id for volume in used],
        orthogonal_views=figures.views + figures.closing,
        slice_grids=figures.grids,
        profiles=figures.profiles,
        dice_rows=dice_rows,
        label_names={int(key): name for key, name in labels.items()},
        lineage=_lineage_entries(synthetic, ordered, config.evaluation.lineage_entries),
    )


def _usefulness(
    store: Path,
    synthetic: Path,
    volumes: list[StoredSynthetic],
    train_ids: list[str],
    test_ids: list[str],
    num_classes: int,
    config: Config,
    seed: int,
) -> tuple[list[StoredSynthetic], list[dict]]:
    """The volumes derived from training cases only, and the Dice rows of real vs real + synthetic with them."""
    splits = store_splits(store)
    used = [v for v in volumes if usable_for_training(v.source_case_ids, splits, train_ids)]
    if not used:
        return used, []
    rows = compare_real_vs_augmented(
        StoredVolumes(store, tuple(train_ids)),
        StoredVolumes(synthetic, tuple(volume.synthetic_id for volume in used)),
        StoredVolumes(store, tuple(test_ids)),
        num_classes,
        config.evaluation.segmentation_steps,
        seed,
        config.evaluation.scarce_fraction,
        [{train_ids.index(case) for case in volume.source_case_ids} for volume in used],
    )
    return used, rows


def segmentation_comparison(
    store: str | Path, synthetic: str | Path, config: Config, models_dir: str | Path, seed: int
) -> list[dict]:
    """The usefulness comparison of `evaluate` alone, with another segmentation seed (spread over seeds)."""
    store, synthetic = Path(store), Path(synthetic)
    current = select_current(synthetic, CurrentGeneration.of(Path(models_dir), config)).current
    test_ids, train_ids = _test_and_training_cases(store)
    num_classes = max(len(store_attributes(store).get("labels", {})), 2)
    return _usefulness(store, synthetic, current, train_ids, test_ids, num_classes, config, seed)[1]


def _scored_roles(config: Config) -> tuple[str, ...]:
    ablation = (f"{ABLATION_MODELS}/stage2",) if with_outline_ablation(config) else ()
    return ("stage2", "baseline", *ablation)


def evaluation_key(
    store: Path, synthetic: Path, models_dir: Path, config: Config, feature_extractor: str | None
) -> str:
    """What the report depends on: config, real data, synthetic volumes, models and the feature extractor."""
    return derive_id(
        "eval",
        config=config_hash(config),
        manifest=manifest_digest(store),
        synthetic=list_synthetic(synthetic),
        models={role: read_bundle_meta(models_dir / role)["sha256"] for role in _scored_roles(config)},
        feature_extractor=sha256_file(feature_extractor) if feature_extractor else None,
    )
