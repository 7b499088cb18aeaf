"""A self-contained HTML evaluation report: one file that opens from disk with no server and no network.

Images are embedded as base64 PNG data URIs, plots are inline SVG, CSS is inline; nothing is fetched. The
report consumes an evaluation's result (`gem3d.evaluation.EvaluationResult`, via `evaluation_report_inputs`);
the evaluation never imports it.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gem3d.evaluation.results import EvaluationResult, Figure, LineageEntry, SettingSummary, SliceProfile

__all__ = [
    "EvaluationResult",
    "Figure",
    "LineageEntry",
    "ReportInputs",
    "SettingSummary",
    "SliceProfile",
    "dice_verdict",
    "evaluation_report_inputs",
    "line_plot_svg",
    "render_html",
    "render_report",
]
SECTION_HEADINGS = {
    "fidelity": "Fidelity",
    "consistency": "Volumetric consistency",
    "diversity": "Diversity",
    "distribution": "Distribution distance",
    "views": "Orthogonal views",
    "grids": "Slice grids",
    "profiles": "Adjacent-slice differences",
    "usefulness": "Segmentation usefulness",
    "lineage": "Lineage",
}
DICE_TOLERANCE = 0.01
SERIES_COLOURS = ("#1f6fb4", "#d0342c", "#2a9d55", "#8e5bb5")


@dataclass
class ReportInputs:
    """Everything the report shows; the evaluation flow fills it."""

    title: str
    config_hash: str
    run_info: dict[str, str] = field(default_factory=dict)
    settings: list[SettingSummary] = field(default_factory=list)
    feature_description: str = ""
    orthogonal_views: list[Figure] = field(default_factory=list)
    slice_grids: list[Figure] = field(default_factory=list)
    profiles: list[SliceProfile] = field(default_factory=list)
    dice_rows: list[dict[str, Any]] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)
    lineage: list[LineageEntry] = field(default_factory=list)
    selection_note: str = ""


def evaluation_report_inputs(
    result: EvaluationResult, title: str, config_hash: str, run_info: dict[str, str]
) -> ReportInputs:
    """The report of an evaluation result: its summaries, figures and Dice rows, and what it was computed on."""
    info = {
        **run_info,
        "test cases": ", ".join(result.test_case_ids),
        "training cases": str(len(result.training_case_ids)),
        "synthetic volumes": f"{len(result.evaluated)} evaluated, {len(result.left_out)} older left out",
    }
    return ReportInputs(
        title=title,
        config_hash=config_hash,
        run_info=info,
        settings=result.settings,
        feature_description=result.feature_description,
        orthogonal_views=result.orthogonal_views,
        slice_grids=result.slice_grids,
        profiles=result.profiles,
        dice_rows=result.dice_rows,
        label_names=result.label_names,
        lineage=result.lineage,
        selection_note=result.selection_note(),
    )


_CSS = """
:root { --ink: #1d232b; --muted: #5d6773; --line: #dde2e8; --panel: #f6f8fa; --accent: #1f6fb4; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #fff; }
header { background: #17212b; color: #f2f5f8; padding: 22px 40px 18px; }
header h1 { margin: 0 0 10px; font-size: 24px; font-weight: 600; }
header dl { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 4px 24px; margin: 0; }
header dt { font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: #9fb0c0; }
header dd { margin: 0 0 6px; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px;
            overflow-wrap: anywhere; }
nav { padding: 10px 40px; border-bottom: 1px solid var(--line); background: var(--panel); font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 18px; white-space: nowrap; }
main { padding: 8px 40px 48px; max-width: 1500px; }
section { margin-top: 28px; }
h2 { font-size: 19px; font-weight: 600; border-bottom: 2px solid var(--line); padding-bottom: 4px; margin: 0 0 12px; }
p.note { color: var(--muted); margin: 6px 0 12px; max-width: 1000px; }
p.verdict { font-weight: 600; margin: 10px 0; max-width: 1000px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
th, td { padding: 6px 14px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: var(--panel); font-weight: 600; border-bottom: 2px solid var(--line); }
th:first-child, td:first-child, table.text th, table.text td { text-align: left; }
th.group { text-align: center; border-bottom: 1px solid var(--line); }
tbody tr:nth-child(even) td { background: #fbfcfd; }
td.up { color: #1e7d3a; font-weight: 600; } td.down { color: #b3261e; font-weight: 600; }
td.chain { text-align: left; white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace;
           font-size: 12px; }
td.id { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
.grid { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; padding: 10px; background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
         max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; image-rendering: pixelated; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; max-width: 640px; }
figcaption b { color: var(--ink); }
"""


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _mean_std(values: Sequence[float], digits: int) -> str:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return "&mdash;"
    if finite.size == 1:
        return f"{finite[0]:.{digits}f}"
    return f"{finite.mean():.{digits}f} &plusmn; {finite.std(ddof=1):.{digits}f}"


def _number(value: float | None, spec: str) -> str:
    return "&mdash;" if value is None or not np.isfinite(value) else format(value, spec)


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    cell_classes: Sequence[Sequence[str]] = (),
    groups: Sequence[tuple[str, int]] = (),
    table_class: str = "",
) -> str:
    """An HTML table; header cells are escaped, body cells are trusted HTML built in this module.

    `groups`: an optional first header row of (title, column span) cells.
    """
    head = "".join(f"<th>{_escape(cell)}</th>" for cell in header)
    if groups:
        group_cells = "".join(f'<th colspan="{span}" class="group">{_escape(title)}</th>' for title, span in groups)
        head = f"{group_cells}</tr><tr>{head}"
    body = []
    for index, row in enumerate(rows):
        classes = cell_classes[index] if index < len(cell_classes) else [""] * len(row)
        cells = "".join(
            f'<td class="{css}">{cell}</td>' if css else f"<td>{cell}</td>"
            for cell, css in zip(row, classes, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    css = f' class="{table_class}"' if table_class else ""
    return f"<table{css}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    return [start + i * step for i in range(int(math.ceil((high - start) / step)) + 1)]


def line_plot_svg(
    series: dict[str, Sequence[float]],
    title: str,
    x_label: str,
    y_label: str,
    markers: Sequence[float] = (),
    marker_label: str = "window boundary",
    width: int = 560,
    height: int = 280,
) -> str:
    """An inline SVG line plot with axes, ticks, a legend and optional dashed vertical markers."""
    left, right, top, bottom = 62, 16, 50, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    lengths = [len(values) for values in series.values()]
    x_max = max(max(lengths, default=1) - 1, 1)
    finite = [v for values in series.values() for v in values if np.isfinite(v)]
    y_ticks = _nice_ticks(min(0.0, *finite) if finite else 0.0, max(finite) * 1.05 if finite else 1.0)
    y_low, y_high = y_ticks[0], y_ticks[-1]
    x_ticks = [float(v) for v in _nice_ticks(0, x_max, 6) if v <= x_max]

    def sx(x: float) -> float:
        return left + plot_w * x / x_max

    def sy(y: float) -> float:
        return top + plot_h * (1 - (y - y_low) / (y_high - y_low))

    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_escape(title)}" font-family="Arial, sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="18" font-size="13" font-weight="bold" fill="#1d232b">{_escape(title)}</text>',
    ]
    for tick in y_ticks:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(tick):.1f}" y2="{sy(tick):.1f}" stroke="#e6e9ed"/>'
            f'<text x="{left - 6}" y="{sy(tick) + 4:.1f}" text-anchor="end" fill="#5d6773">{tick:.3g}</text>'
        )
    for tick in x_ticks:
        parts.append(
            f'<line x1="{sx(tick):.1f}" x2="{sx(tick):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" '
            f'stroke="#5d6773"/><text x="{sx(tick):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
            f'fill="#5d6773">{tick:g}</text>'
        )
    for marker in markers:
        parts.append(
            f'<line x1="{sx(marker):.1f}" x2="{sx(marker):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#8a939c" '
            f'stroke-dasharray="4 3"/>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#5d6773"/>'
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#5d6773"/>'
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle" fill="#1d232b">{_escape(x_label)}</text>'
        f'<text transform="translate(14 {top + plot_h / 2}) rotate(-90)" text-anchor="middle" '
        f'fill="#1d232b">{_escape(y_label)}</text>'
    )
    legend = list(series)
    for index, name in enumerate(legend):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in enumerate(series[name]) if np.isfinite(y))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
    entries = [(name, SERIES_COLOURS[i % len(SERIES_COLOURS)], False) for i, name in enumerate(legend)]
    if markers:
        entries.append((marker_label, "#8a939c", True))
    x = left
    for name, colour, dashed in entries:
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        parts.append(
            f'<line x1="{x}" x2="{x + 20}" y1="{top - 12}" y2="{top - 12}" stroke="{colour}" stroke-width="2"{dash}/>'
            f'<text x="{x + 26}" y="{top - 8}" fill="#1d232b">{_escape(name)}</text>'
        )
        x += 40 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def _png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(figures: Sequence[Figure]) -> str:
    if not figures:
        return '<p class="note">Not computed in this run.</p>'
    cards = [
        f'<figure><img src="{_png_data_uri(f.image)}" alt="{_escape(f.title)}" width="{f.image.width}" '
        f'height="{f.image.height}"><figcaption><b>{_escape(f.title)}</b>'
        f"{'<br>' + _escape(f.caption) if f.caption else ''}</figcaption></figure>"
        for f in figures
    ]
    return f'<div class="grid">{"".join(cards)}</div>'


def _fidelity(settings: Sequence[SettingSummary]) -> str:
    rows = [
        [_escape(s.setting), str(len(s.psnr)), _mean_std(s.psnr, 2), _mean_std(s.ssim, 4), _mean_std(s.ms_ssim, 4)]
        for s in settings
        if s.psnr or s.ssim or s.ms_ssim
    ]
    note = (
        '<p class="note">Test cases regenerated from their own mask and informed slice, compared voxel-wise with the '
        "truth (mean &plusmn; standard deviation over volumes). PSNR over the whole volume (data range 2, capped at "
        "100 dB); SSIM and MS-SSIM slice-wise in 2D on axial slices and averaged (SSIM window 11; MS-SSIM 3 scales, "
        "window 7). Higher is better.</p>"
    )
    if not rows:
        return note + '<p class="note">Not computed in this run.</p>'
    return note + _table(["Setting", "Volumes", "PSNR (dB)", "SSIM", "MS-SSIM"], rows)


def _consistency(settings: Sequence[SettingSummary]) -> str:
    rows = [
        [_escape(s.setting), _mean_std(s.seam_overlap, 3), _mean_std(s.seam_no_overlap, 3)]
        for s in settings
        if s.seam_overlap or s.seam_no_overlap
    ]
    note = (
        '<p class="note">Seam score: mean absolute slice-to-slice change across window boundaries divided by the '
        "mean change inside windows (1.0 = no seam; above 1 = visible steps where windows meet). The ablation "
        "without overlapped inpainting shows what the overlap removes.</p>"
    )
    if not rows:
        return note + '<p class="note">Not computed in this run.</p>'
    header = ["Setting", "Seam score, overlapped inpainting", "Seam score, no overlap (ablation)"]
    return note + _table(header, rows)


def _diversity(settings: Sequence[SettingSummary]) -> str:
    rows = [[_escape(s.setting), str(len(s.diversity)), _mean_std(s.diversity, 4)] for s in settings if s.diversity]
    note = (
        '<p class="note">Mean pairwise MS-SSIM between variants generated for the same case (lower = more diverse), '
        "mean &plusmn; standard deviation over cases.</p>"
    )
    if not rows:
        return note + '<p class="note">Not computed in this run.</p>'
    return note + _table(["Setting", "Cases", "Mean pairwise MS-SSIM"], rows)


def _distribution(settings: Sequence[SettingSummary], feature_description: str) -> str:
    rows = [
        [_escape(s.setting), _number(s.frechet, ".4g"), _number(s.mmd, ".4g")]
        for s in settings
        if s.frechet is not None or s.mmd is not None
    ]
    features = f"Features used: {_escape(feature_description)}" if feature_description else "Features used: not stated."
    note = (
        '<p class="note">Distance between real and synthetic slice-feature distributions (lower = closer): Frechet '
        "distance between fitted Gaussians (the FID formula) and the unbiased squared MMD with an RBF kernel "
        f"(median-heuristic bandwidth). {features}</p>"
    )
    if not rows:
        return note + '<p class="note">Not computed in this run.</p>'
    return note + _table(["Setting", "Frechet distance", "MMD² (unbiased)"], rows)


def _profiles(profiles: Sequence[SliceProfile]) -> str:
    if not profiles:
        return '<p class="note">Not computed in this run.</p>'
    note = (
        '<p class="note">Mean absolute difference between consecutive axial slices (step z &rarr; z+1). Spikes at the '
        "dashed window boundaries in the synthetic line, absent from the real one, are seams.</p>"
    )
    plots = [
        "<figure>"
        + line_plot_svg(
            {"real": p.real, "synthetic": p.synthetic},
            p.title,
            "slice step z → z+1",
            "mean |Δ| between slices",
            markers=[b - 1 for b in p.boundaries],
        )
        + "</figure>"
        for p in profiles
    ]
    return note + f'<div class="grid">{"".join(plots)}</div>'


def _paired_mean_dice(rows: Sequence[dict[str, Any]], amount: str) -> tuple[float, float]:
    """Mean Dice of (real, real+synthetic) over the labels both arms scored (finite), so the means compare."""
    scores = {(r["setting"], r["label"]): r["dice"] for r in rows if r["amount"] == amount}
    labels = [
        label
        for setting, label in scores
        if setting == "real"
        and np.isfinite(scores[setting, label])
        and np.isfinite(scores.get(("real+synthetic", label), np.nan))
    ]
    if not labels:
        return float("nan"), float("nan")
    real = float(np.mean([scores["real", label] for label in labels]))
    return real, float(np.mean([scores["real+synthetic", label] for label in labels]))


def dice_verdict(rows: Sequence[dict[str, Any]], tolerance: float = DICE_TOLERANCE) -> str:
    """A plain sentence, computed from the Dice rows, saying whether adding synthetic data helped."""
    sentences = []
    for amount, phrase in (("all", "with all real training cases"), ("scarce", "with scarce real data")):
        real, augmented = _paired_mean_dice(rows, amount)
        if not (np.isfinite(real) and np.isfinite(augmented)):
            continue
        delta = augmented - real
        if delta > tolerance:
            outcome = "helped"
        elif delta < -tolerance:
            outcome = "hurt"
        else:
            outcome = f"made no measurable difference (|change| within {tolerance})"
        sentences.append(
            f"{phrase.capitalize()}, adding synthetic volumes {outcome}: mean Dice {real:.3f} (real only) vs "
            f"{augmented:.3f} (real + synthetic), change {delta:+.3f}."
        )
    if not sentences:
        return "No Dice comparison was computed."
    return " ".join(sentences) + " One training run per arm, so small changes may be noise."


def _usefulness(rows: Sequence[dict[str, Any]], label_names: dict[int, str]) -> str:
    note = (
        '<p class="note">A MONAI 2D UNet trained slice-wise with the same step budget and seed on real cases only and '
        "on real + synthetic cases, once with all real training cases and once with a scarce subset; 3D Dice per "
        "label on the real test cases.</p>"
    )
    if not rows:
        return note + '<p class="note">Not computed in this run.</p>'
    lookup = {(r["setting"], r["amount"], r["label"]): r["dice"] for r in rows}
    counts = {(r["setting"], r["amount"]): (r.get("n_real"), r.get("n_synthetic")) for r in rows}
    amounts = [a for a in ("all", "scarce") if any(r["amount"] == a for r in rows)]
    header, groups = ["Label"], [("", 1)]
    for amount in amounts:
        real_n, _ = counts.get(("real", amount), (None, None))
        _, synthetic_n = counts.get(("real+synthetic", amount), (None, None))
        title = "All real training cases" if amount == "all" else "Scarce real data"
        groups.append((f"{title} ({real_n} real)" if real_n is not None else title, 3))
        synthetic_text = f" (+{synthetic_n})" if synthetic_n is not None else ""
        header += ["real only", f"real + synthetic{synthetic_text}", "change"]
    labels = sorted({r["label"] for r in rows})
    body, classes = [], []
    for label in [*labels, None]:
        name = "mean over labels" if label is None else f"{label} {label_names.get(label, '')}".strip()
        row, css = [f"<b>{_escape(name)}</b>" if label is None else _escape(name)], [""]
        for amount in amounts:
            if label is None:
                real, augmented = _paired_mean_dice(rows, amount)
            else:
                real = lookup.get(("real", amount, label), float("nan"))
                augmented = lookup.get(("real+synthetic", amount, label), float("nan"))
            delta = augmented - real
            row += [_number(real, ".3f"), _number(augmented, ".3f"), _number(delta, "+.3f")]
            trend = "up" if delta > DICE_TOLERANCE else "down" if delta < -DICE_TOLERANCE else ""
            css += ["", "", trend]
        body.append(row)
        classes.append(css)
    return note + _table(header, body, classes, groups) + f'<p class="verdict">{_escape(dice_verdict(rows))}</p>'


def _lineage(entries: Sequence[LineageEntry]) -> str:
    if not entries:
        return '<p class="note">No synthetic volumes recorded.</p>'
    rows = [[_escape(e.synthetic_id), _escape(e.chain)] for e in entries]
    classes = [["id", "chain"]] * len(rows)
    return _table(["Synthetic id", "Lineage chain"], rows, classes, table_class="text")


def render_html(inputs: ReportInputs) -> str:
    """The report as one HTML string with every section, in a fixed order."""
    info = {"config hash": inputs.config_hash, **inputs.run_info}
    header_items = "".join(f"<div><dt>{_escape(k)}</dt><dd>{_escape(v)}</dd></div>" for k, v in info.items())
    bodies = {
        "fidelity": _fidelity(inputs.settings),
        "consistency": _consistency(inputs.settings),
        "diversity": _diversity(inputs.settings),
        "distribution": _distribution(inputs.settings, inputs.feature_description),
        "views": '<p class="note">Middle axial, coronal and sagittal slices; the contours of the labels and of the '
        "anatomy outline (the body part the model is conditioned on) in colour.</p>"
        + _figures(inputs.orthogonal_views),
        "grids": _figures(inputs.slice_grids),
        "profiles": _profiles(inputs.profiles),
        "usefulness": _usefulness(inputs.dice_rows, inputs.label_names),
        "lineage": _lineage(inputs.lineage),
    }
    note = f'<p class="note">{_escape(inputs.selection_note)}</p>' if inputs.selection_note else ""
    nav = "".join(f'<a href="#{key}">{_escape(heading)}</a>' for key, heading in SECTION_HEADINGS.items())
    sections = "".join(
        f'<section id="{key}"><h2>{_escape(SECTION_HEADINGS[key])}</h2>{body}</section>' for key, body in bodies.items()
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_escape(inputs.title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_escape(inputs.title)}</h1><dl>{header_items}</dl></header>"
        f"<nav>{nav}</nav><main>{note}{sections}</main></body></html>\n"
    )


def render_report(out_dir: str | Path, sections: ReportInputs) -> Path:
    """Write `report.html` into `out_dir` atomically and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    handle, temporary = tempfile.mkstemp(dir=out_dir, prefix=".report.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(render_html(sections))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
