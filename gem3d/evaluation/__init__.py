"""Evaluation of synthetic volumes against real ones: the numbers behind the report, read from the stores.

Fidelity compares a test case regenerated from its own mask and informed slice with the truth; volumetric
consistency uses the window boundaries each volume's own sampler had; diversity compares variants of one
mask; distribution distance uses features of a network trained here on the real training slices. Only the
synthetic volumes made by the current checkpoints and sampler settings are scored (`selection`); every
store is read one volume at a time (`scores`, `gem3d.volume_sets`). The report consumes the result.
"""

from gem3d.evaluation.results import EvaluationResult, Figure, LineageEntry, SettingSummary, SliceProfile
from gem3d.evaluation.run import (
    Regenerate,
    RegenerationArm,
    evaluate,
    evaluation_key,
    regeneration_arms,
    segmentation_comparison,
)
from gem3d.evaluation.scores import FeatureStream, SettingScores, fidelity, slice_profile
from gem3d.evaluation.selection import (
    CurrentGeneration,
    recorded_boundaries,
    select_current,
    usable_for_training,
)

__all__ = [
    "CurrentGeneration",
    "EvaluationResult",
    "FeatureStream",
    "Figure",
    "LineageEntry",
    "RegenerationArm",
    "Regenerate",
    "SettingScores",
    "SettingSummary",
    "SliceProfile",
    "evaluate",
    "evaluation_key",
    "fidelity",
    "recorded_boundaries",
    "regeneration_arms",
    "segmentation_comparison",
    "select_current",
    "slice_profile",
    "usable_for_training",
]
