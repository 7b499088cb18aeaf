"""Which synthetic volumes an evaluation scores, where their seams lie, and which may train a segmenter.

A synthetic store keeps every volume ever published, including those of earlier checkpoints or sampler
settings. Only volumes made by the current ones are scored, each with the window boundaries its own sampler
had (from its lineage record), and only volumes derived from training cases alone may join the training data.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gem3d.checkpoints import SPEC_FILE, read_bundle_meta
from gem3d.config import Config
from gem3d.lineage import LineageRecord
from gem3d.sampling.windows import window_boundaries
from gem3d.splits import TRAINING_SPLITS, derived_split
from gem3d.synthesis.records import sampler_record
from gem3d.synthetic_store import list_synthetic, synthetic_attributes

BUNDLE_ROLES = ("stage2", "baseline", "slicegen", "autoencoder")


def recorded_boundaries(record: LineageRecord, num_slices: int) -> list[int]:
    """The window boundaries of a volume as its own sampler placed them (start slice, window, overlap)."""
    sampler = record.sampler
    return window_boundaries(
        num_slices, record.start_slice, sampler["window_length"], sampler["overlap"], sampler["directions"]
    )


@dataclass(frozen=True)
class CurrentGeneration:
    """What a synthetic volume must have been made with to count as made by the current models.

    `checkpoints`: role -> sha256 of the current bundle in the models folder. A recorded checkpoint must match
    the current bundle of its role; a pretrained autoencoder (no bundle; named by the config's path) is not
    compared. `sampler`: every recorded sampler setting named here must be equal.
    """

    checkpoints: Mapping[str, str]
    sampler: Mapping[str, Any]
    unchecked_roles: frozenset[str] = frozenset()

    @classmethod
    def of(cls, models_dir: str | Path, config: Config) -> CurrentGeneration:
        """The bundles in `models_dir` and the sampler settings of `config`."""
        models_dir = Path(models_dir)
        checkpoints = {
            role: read_bundle_meta(models_dir / role)["sha256"]
            for role in BUNDLE_ROLES
            if (models_dir / role / SPEC_FILE).exists()
        }
        if config.autoencoder.kind != "train":
            checkpoints.pop("autoencoder", None)
        unchecked = frozenset({"autoencoder"}) if config.autoencoder.kind == "pretrained" else frozenset()
        return cls(checkpoints, sampler_record(config), unchecked)

    def admits(self, record: LineageRecord) -> bool:
        """Whether the volume was made by the current checkpoints with the current sampler settings."""
        if not record.checkpoints:
            return False
        checkpoints_current = all(
            ref.role in self.unchecked_roles or self.checkpoints.get(ref.role) == ref.sha256
            for ref in record.checkpoints
        )
        sampler_current = all(record.sampler.get(name) == value for name, value in self.sampler.items())
        return checkpoints_current and sampler_current


@dataclass(frozen=True)
class StoredSynthetic:
    """A published synthetic volume's id, setting and the real cases it derives from (no voxels)."""

    synthetic_id: str
    setting: str
    source_case_id: str
    source_case_ids: frozenset[str]


@dataclass(frozen=True)
class Selection:
    """The volumes of a synthetic store to score (current) and those left out (older), by id."""

    current: list[StoredSynthetic]
    left_out: list[str]


def select_current(synthetic: str | Path, generation: CurrentGeneration) -> Selection:
    """Split the store's volumes into those the current generation made and older ones (reads attributes only)."""
    current, left_out = [], []
    for synthetic_id in list_synthetic(synthetic):
        attributes = synthetic_attributes(synthetic, synthetic_id)
        record = LineageRecord.model_validate(attributes["lineage"])
        if generation.admits(record):
            sources = frozenset(record.source_case_ids())
            current.append(StoredSynthetic(synthetic_id, attributes["setting"], record.source_case_id, sources))
        else:
            left_out.append(synthetic_id)
    return Selection(current, left_out)


def usable_for_training(
    source_case_ids: Iterable[str], splits: Mapping[str, str], training_cases: Collection[str]
) -> bool:
    """Whether a synthetic volume may train a segmenter: every real case it derives from is a training case in use.

    The same rule as for export (`gem3d.splits.derived_split`): mask, informed slice and pasted lesions all
    count, so a volume carrying a test case's informed slice never becomes training data.
    """
    sources = set(source_case_ids)
    return bool(sources) and derived_split(sources, splits) in TRAINING_SPLITS and sources <= set(training_cases)
