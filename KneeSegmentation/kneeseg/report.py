"""A cohort's report: one static HTML page, a thumbnail overlay per case, worst cases first.

A researcher running hundreds of knees cannot open every overlay: the page lists each case with its
thumbnail, bone volumes and status, the cases to check first at the top (failed, then flagged, then
by ascending quality score when the rows carry one). It needs no server: open ``report.html``.
"""

import html
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from .overlay import _to_uint8, blend, draw_legend, save_png

REPORT_NAME = "report.html"
THUMBNAIL_FOLDER = "thumbnails"


def case_thumbnail(image, labelmap, labels, path, size: int = 192) -> Path:
    """A PNG of the slice through the middle of the bones (along the scan's own slices), overlaid."""
    import SimpleITK as sitk

    from .overlay import acquisition_axis

    volume = sitk.GetArrayViewFromImage(image)
    label_array = sitk.GetArrayViewFromImage(labelmap)
    axis = acquisition_axis(image)
    others = tuple(a for a in range(3) if a != axis)
    bone_slices = np.flatnonzero(label_array.any(axis=others))
    index = int(np.median(bone_slices)) if len(bone_slices) else volume.shape[axis] // 2
    gray = _to_uint8(np.take(volume, index, axis=axis))
    rgb = blend(gray, np.take(label_array, index, axis=axis), {label.value: label.color for label in labels})
    spacing = np.array(image.GetSpacing())[::-1][list(others)]
    height, width = rgb.shape[:2]
    scale = spacing / spacing.min()
    picture = Image.fromarray(rgb).resize((int(round(width * scale[1])), int(round(height * scale[0]))))
    picture.thumbnail((size, size))
    return save_png(picture, path)


def _flagged(row) -> bool:
    return str(row.get("quality_flag", "")).lower() in ("true", "1", "yes", "check")


def worst_first(row) -> tuple:
    """Sort key: failed first, then flagged, then by quality score (lowest first), then by name."""
    try:
        score = float(row.get("quality_score"))
    except (TypeError, ValueError):
        score = float("inf")
    return (row.get("status") != "failed", not _flagged(row), score, str(row.get("case", "")))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return html.escape("" if value is None else str(value))


def render_report(rows, bones, title="kneeseg cohort", thumbnails=None, legend=None) -> str:
    """The HTML text of the report. ``rows``: one dict per case (``case``, ``status``, ``error``,
    ``volumes_ml`` or ``<bone>_ml`` keys, optional ``quality_score``/``quality_flag``); ``thumbnails``:
    case -> image path relative to the page."""
    thumbnails = thumbnails or {}
    has_quality = any("quality_score" in r for r in rows)
    head = ["", "case", "status"] + (["quality", "check"] if has_quality else []) + [f"{b} mL" for b in bones]
    lines = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td.l,th.l{text-align:left}"
             "tr.failed{background:#fdd}tr.flagged{background:#ffe9b3}img{display:block}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(rows)} cases, {sum(r.get('status') == 'failed' for r in rows)} failed. The cases to check "
             "first are at the top. Research use only: check every result.</p>"]
    if legend:
        lines.append(f"<p><img src='{html.escape(legend)}' alt='colour legend'></p>")
    lines.append("<table><tr>" + "".join(f"<th class='l'>{html.escape(h)}</th>" for h in head) + "</tr>")
    for row in sorted(rows, key=worst_first):
        case = str(row.get("case", ""))
        flagged = _flagged(row)
        css = "failed" if row.get("status") == "failed" else ("flagged" if flagged else "")
        image = thumbnails.get(case)
        cells = [f"<img src='{html.escape(quote(image))}' alt='{html.escape(case)}' width='160'>" if image else "",
                 f"<b>{html.escape(case)}</b>",
                 _cell(row.get("status")) + (f"<br><small>{_cell(row.get('error'))}</small>" if row.get("error") else "")]
        if has_quality:
            reasons = row.get("quality_reasons")
            reasons = "; ".join(reasons) if isinstance(reasons, list) else reasons
            cells += [_cell(row.get("quality_score")),
                      ("check" + (f"<br><small>{_cell(reasons)}</small>" if reasons else "")) if flagged else ""]
        volumes = row.get("volumes_ml") or {}
        cells += [_cell(volumes.get(b, row.get(f"{b}_ml"))) for b in bones]
        left = {0, 1, 2, 4} if has_quality else {0, 1, 2}  # text columns (the check column holds the reasons)
        lines.append(f"<tr class='{css}'>" + "".join(
            f"<td class='l'>{c}</td>" if i in left else f"<td>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    lines += ["</table>", "</body></html>"]
    return "\n".join(lines) + "\n"


def write_report(rows, output_dir, labels, title="kneeseg cohort") -> Path:
    """Write ``report.html`` into ``output_dir``; thumbnails are looked up in ``thumbnails/<case>.png``."""
    from .io import atomic_path

    output_dir = Path(output_dir)
    thumbnails = {}
    for row in rows:
        relative = f"{THUMBNAIL_FOLDER}/{row.get('case')}.png"
        if (output_dir / relative).is_file():
            thumbnails[str(row.get("case"))] = relative
    legend_path = output_dir / THUMBNAIL_FOLDER / "legend.png"
    legend = Image.new("RGB", (110 * max(len(labels), 1), 20))
    save_png(draw_legend(legend, labels, y=2), legend_path)
    page = render_report(rows, [label.name for label in labels], title, thumbnails,
                         legend=f"{THUMBNAIL_FOLDER}/legend.png")
    path = output_dir / REPORT_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
