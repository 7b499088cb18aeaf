"""What an evaluation produces: per-setting metric values, figures, Dice rows and which volumes were scored.

Plain records with no rendering: the HTML report (`gem3d.report`) and the MLflow metrics consume them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class SettingSummary:
    """Per-volume metric values of one setting (ic, icma, ig, igma, baseline, real-only); empty = not computed."""

    setting: str
    psnr: Sequence[float] = ()
    ssim: Sequence[float] = ()
    ms_ssim: Sequence[float] = ()
    seam_overlap: Sequence[float] = ()
    seam_no_overlap: Sequence[float] = ()
    diversity: Sequence[float] = ()
    frechet: float | None = None
    mmd: float | None = None


@dataclass
class Figure:
    """A picture for the report (from `gem3d.views`), embedded as PNG."""

    title: str
    image: Image.Image
    caption: str = ""


@dataclass
class SliceProfile:
    """Adjacent-slice difference profiles of a real volume and its synthetic counterpart.

    `boundaries` are window starts (slice `b`); the step `b - 1 -> b` crosses them and is marked on the plot.
    """

    title: str
    real: Sequence[float]
    synthetic: Sequence[float]
    boundaries: Sequence[int] = ()


@dataclass
class LineageEntry:
    """One synthetic volume's id and its chain text (`gem3d.lineage.format_chain`)."""

    synthetic_id: str
    chain: str


@dataclass
class EvaluationResult:
    """Everything one evaluation measured, and which cases and synthetic volumes it measured it on.

    `left_out` are the synthetic volumes of the store not made by the current checkpoints and sampler
    settings (older runs); they are counted and named, never scored.
    """

    settings: list[SettingSummary]
    feature_description: str
    test_case_ids: list[str]
    training_case_ids: list[str]
    evaluated: list[str]
    left_out: list[str]
    used_for_training: list[str] = field(default_factory=list)
    orthogonal_views: list[Figure] = field(default_factory=list)
    slice_grids: list[Figure] = field(default_factory=list)
    profiles: list[SliceProfile] = field(default_factory=list)
    dice_rows: list[dict[str, Any]] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)
    lineage: list[LineageEntry] = field(default_factory=list)

    def selection_note(self) -> str:
        """One sentence: how many synthetic volumes were scored and how many older ones were left out."""
        return (
            f"{len(self.evaluated)} synthetic volumes made by the current checkpoints and sampler settings were "
            f"evaluated; {len(self.left_out)} older volumes (other checkpoints or sampler settings) were left out. "
            f"{len(self.used_for_training)} of the evaluated volumes derive only from training cases and joined the "
            "real + synthetic segmentation arm."
        )

    def metrics(self) -> dict[str, float]:
        """Flat metrics: mean of each per-volume metric per setting, Dice per arm, and the volume counts."""
        metrics: dict[str, float] = {
            "synthetic.evaluated": float(len(self.evaluated)),
            "synthetic.left_out": float(len(self.left_out)),
            "synthetic.used_for_training": float(len(self.used_for_training)),
        }
        for summary in self.settings:
            key = summary.setting.split(" ")[0].lower().replace("-", "")
            for name in ("psnr", "ssim", "ms_ssim", "seam_overlap", "seam_no_overlap", "diversity"):
                values = getattr(summary, name)
                if len(values):
                    metrics[f"{key}.{name}"] = float(np.mean(values))
            for name in ("frechet", "mmd"):
                if getattr(summary, name) is not None:
                    metrics[f"{key}.{name}"] = float(getattr(summary, name))
        for row in self.dice_rows:
            if not np.isnan(row["dice"]):
                label = f"dice.{row['setting'].replace('+', '_plus_')}.{row['amount']}.label{row['label']}"
                metrics[label] = row["dice"]
        return metrics
