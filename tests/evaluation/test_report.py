"""The self-contained HTML report: every section, embedded images, inline SVG, no network, honest Dice verdict."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest

from gem3d import metrics, views
from gem3d.report import (
    SECTION_HEADINGS,
    Figure,
    LineageEntry,
    ReportInputs,
    SettingSummary,
    SliceProfile,
    dice_verdict,
    line_plot_svg,
    render_report,
)
from tests.evaluation import blob_case


class _Collector(HTMLParser):
    """Headings, image sources and every attribute value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.attributes: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        self.attributes += [value or "" for _, value in attrs]
        self._in_heading = tag == "h2"
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._in_heading:
            self.headings.append(data)
            self._in_heading = False


def _dice_rows(all_change: float, scarce_change: float) -> list[dict]:
    rows = []
    for amount, change in (("all", all_change), ("scarce", scarce_change)):
        for label, base in ((1, 0.80), (2, 0.60)):
            rows.append({"setting": "real", "amount": amount, "label": label, "dice": base, "n_real": 4})
            rows.append({"setting": "real+synthetic", "amount": amount, "label": label, "dice": base + change})
    return rows


@pytest.fixture(scope="module")
def inputs() -> ReportInputs:
    rng = np.random.default_rng(0)
    real, label = blob_case(rng, (16, 32, 32))
    synthetic = real + rng.normal(0, 0.05, real.shape).astype(np.float32)
    synthetic[8:] += 0.1
    settings = [
        SettingSummary(
            name,
            psnr=[metrics.psnr(synthetic, real)] * 2,
            ssim=[metrics.ssim(synthetic, real)] * 2,
            ms_ssim=[metrics.ms_ssim(synthetic, real)] * 2,
            seam_overlap=[metrics.seam_score(synthetic, [8])],
            seam_no_overlap=[2.5] if name == "ic" else [],
            diversity=[0.91, 0.93],
            frechet=1.25,
            mmd=0.012,
        )
        for name in ("ic", "icma", "ig", "igma", "baseline", "real-only")
    ]
    return ReportInputs(
        title="gem3d evaluation <test>",
        config_hash="cfg-0123456789abcdef",
        run_info={"run id": "run-42"},
        settings=settings,
        feature_description="Penultimate-layer features of a tiny test encoder",
        orthogonal_views=[Figure("case_000", views.side_by_side(real, synthetic, label), "ic")],
        slice_grids=[Figure("case_000 synthetic", views.slice_grid(synthetic, mask=label))],
        profiles=[
            SliceProfile(
                "case_000", metrics.adjacent_slice_profile(real), metrics.adjacent_slice_profile(synthetic), [8]
            )
        ],
        dice_rows=_dice_rows(all_change=-0.03, scarce_change=0.05),
        label_names={1: "oedema", 2: "tumour"},
        lineage=[LineageEntry("syn-00aa11bb22cc33dd", "real case_000 -> flip -> checkpoint stage2")],
    )


def test_report_has_every_section_an_image_and_a_plot_and_no_network_reference(tmp_path, inputs) -> None:
    path = render_report(tmp_path / "report", inputs)
    assert path == tmp_path / "report" / "report.html"
    page = path.read_text(encoding="utf-8")
    collector = _Collector()
    collector.feed(page)
    assert collector.headings == list(SECTION_HEADINGS.values())
    assert len(collector.images) == 2 and all(src.startswith("data:image/png;base64,") for src in collector.images)
    assert "<svg" in page and "<polyline" in page
    assert not re.search(r"https?://", page)
    assert not any(value.startswith(("//", "file:")) for value in collector.attributes)
    for text in ("cfg-0123456789abcdef", "run-42", "tiny test encoder", "syn-00aa11bb22cc33dd", "oedema"):
        assert text in page
    assert "gem3d evaluation &lt;test&gt;" in page and "<test>" not in page
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_report_states_from_the_numbers_whether_synthetic_data_helped(tmp_path, inputs) -> None:
    page = render_report(tmp_path, inputs).read_text(encoding="utf-8")
    assert "With all real training cases, adding synthetic volumes hurt: mean Dice 0.700" in page
    assert "With scarce real data, adding synthetic volumes helped: mean Dice 0.700" in page
    assert "change +0.050" in page and "change -0.030" in page


def test_dice_verdict_calls_small_changes_no_difference() -> None:
    verdict = dice_verdict(_dice_rows(all_change=0.004, scarce_change=-0.002))
    assert verdict.count("made no measurable difference") == 2
    assert "helped" not in verdict and "hurt" not in verdict


def test_empty_report_still_has_every_heading(tmp_path) -> None:
    page = render_report(tmp_path, ReportInputs(title="empty", config_hash="abc")).read_text(encoding="utf-8")
    collector = _Collector()
    collector.feed(page)
    assert collector.headings == list(SECTION_HEADINGS.values())
    assert "Not computed in this run." in page and "No synthetic volumes recorded." in page


def test_line_plot_draws_one_line_per_series_a_legend_and_dashed_markers() -> None:
    svg = line_plot_svg({"real": [0.1, 0.2, 0.1], "synthetic": [0.2, 0.5, 0.2]}, "t", "x", "y", markers=[1])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 2
    assert ">real<" in svg and ">synthetic<" in svg and ">window boundary<" in svg
    assert svg.count('stroke-dasharray="4 3"') == 2  # the marker and its legend entry


def test_dice_verdict_compares_only_labels_both_arms_scored() -> None:
    rows = _dice_rows(all_change=0.0, scarce_change=0.0)
    for row in rows:
        if row["setting"] == "real+synthetic" and row["label"] == 2:
            row["dice"] = float("nan")  # label 2 absent: only label 1 (0.80 in both arms) is compared
    assert "mean Dice 0.800 (real only) vs 0.800 (real + synthetic)" in dice_verdict(rows)
