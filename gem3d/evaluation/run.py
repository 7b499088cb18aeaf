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
from gem3d.store import manifest_digest, open_case_arrays, read_case, store_attributes
from gem3d.synthesis import SynthesisPlan, plan_test_regeneration
from gem3d.synthetic_store import list_synthetic, read_synthetic, synthetic_exists
from gem3d.views import orthogonal_views, side_by_side, slice_grid
from gem3d.volume_sets import StoredVolumes

ENHANCEMENT_ORDER = ("ic", "icma", "ig", "igma")
GEM3D_TITLE = "GEM-3D (test cases, own informed slice)"
BASELINE_TITLE = "baseline (no informed slice)"


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


def regeneration_arms(store: Path, test_ids: Sequence[str], config: Config, models_dir: Path) -> list[RegenerationArm]:
    """GEM-3D, GEM-3D without overlapped inpainting (same weights) and the baseline, planned on the test cases."""
    no_overlap = config.model_copy(
        update={"sampling": config.sampling.model_copy(update={"overlapped_inpainting": False})}
    )
    arms = [
        ("gem3d", "evaluate-test", "stage2", config),
        ("no_overlap", "evaluate-test-no-oi", "stage2", no_overlap),
        ("baseline", "evaluate-test-baseline", "baseline", config),
    ]
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


@dataclass
class _Figures:
    views: list[Figure] = field(default_factory=list)
    grids: list[Figure] = field(default_factory=list)
    profiles: list[SliceProfile] = field(default_factory=list)
    closing: list[Figure] = field(default_factory=list)


def _score_test_arms(
    store: Path, evaluation_store: Path, arms: list[RegenerationArm], figures: _Figures
) -> list[SettingSummary]:
    """Fidelity and seams of the regenerated test cases, one case (truth and its three volumes) at a time.

    A case with a volume the synthesis quarantined (not published) is left out of every arm, so the arms
    compare on the same cases.
    """
    by_name = {arm.name: arm for arm in arms}
    gem3d, baseline = SettingScores(GEM3D_TITLE), SettingScores(BASELINE_TITLE)
    plans = zip(*(by_name[name].plans for name in ("gem3d", "no_overlap", "baseline")), strict=True)
    published = [case for case in plans if all(synthetic_exists(evaluation_store, p.synthetic_id) for p in case)]
    for index, (gem3d_plan, ablation_plan, baseline_plan) in enumerate(published):
        truth, label = read_case(store, gem3d_plan.source_case_id)
        volume, _, record = read_synthetic(evaluation_store, gem3d_plan.synthetic_id)
        gem3d.add_volume(volume, recorded_boundaries(record, len(volume)), truth)
        ablation, _, ablation_record = read_synthetic(evaluation_store, ablation_plan.synthetic_id)
        gem3d.add_ablation(ablation, recorded_boundaries(ablation_record, len(ablation)))
        baseline_volume, _, baseline_record = read_synthetic(evaluation_store, baseline_plan.synthetic_id)
        baseline.add_volume(baseline_volume, recorded_boundaries(baseline_record, len(baseline_volume)), truth)
        if index == 0:
            case = gem3d_plan.source_case_id
            figures.views.append(
                Figure(
                    "test case regenerated (GEM-3D)",
                    side_by_side(truth, volume, label),
                    f"{case}: truth (left) and regenerated from its own mask and informed slice (right)",
                )
            )
            figures.closing.append(Figure(f"real {case}", orthogonal_views(truth, label), "axial, coronal, sagittal"))
    return [gem3d.summary(), baseline.summary()]


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
                figures.views.append(
                    Figure(
                        f"{setting}: real vs synthetic",
                        side_by_side(real_image, image, mask),
                        f"{source} (left) and {synthetic_id} (right), mask outline in colour",
                    )
                )
                figures.grids.append(Figure(f"{setting}: slice grid", slice_grid(image, mask=mask), synthetic_id))
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
    test_ids = store_cases_of_split(store, "test") or store_cases_of_split(store, "val")
    train_ids = [case for case in store_cases_of_split(store, "train", "val") if case not in test_ids]
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
        summaries += _score_test_arms(store, Path(evaluation_store), arms, figures)

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
        _score_setting(setting, volumes, synthetic, store, scores, figures)
        summaries.append(scores.summary(real["all"]))
        ordered += volumes
    # the real test cases' distance to the real training cases: the floor the synthetic settings compare with
    summaries.append(SettingSummary("real-only", **real["test"].distance(real["train"])))

    splits = store_splits(store)
    used = [v for v in ordered if usable_for_training(v.source_case_ids, splits, train_ids)]
    dice_rows = []
    phases.start("segmentation: real vs real + synthetic")
    if used:
        dice_rows = compare_real_vs_augmented(
            StoredVolumes(store, tuple(train_ids)),
            StoredVolumes(synthetic, tuple(volume.synthetic_id for volume in used)),
            StoredVolumes(store, tuple(test_ids)),
            num_classes,
            config.evaluation.segmentation_steps,
            config.seed,
            config.evaluation.scarce_fraction,
            [{train_ids.index(case) for case in volume.source_case_ids} for volume in used],
        )
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
