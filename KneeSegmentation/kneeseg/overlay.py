"""Overlay sheets: slices of a volume with its label map drawn in the bones' colours (PNG, pillow)."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LEGEND_HEIGHT = 20


def acquisition_axis(image) -> int:
    """The numpy axis (k=0, j=1, i=2) with the coarsest spacing: slices through it look like the scan."""
    spacing = image.GetSpacing()  # (i, j, k)
    return 2 - int(np.argmax(spacing))


def _to_uint8(array):
    lo, hi = np.percentile(array, (0.5, 99.5))
    return (np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def blend(gray, labels, colors, alpha=0.45):
    """RGB image of a grey slice with label colours blended in and label outlines drawn solid."""
    from scipy import ndimage

    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    for value, color in colors.items():
        mask = labels == value
        if not mask.any():
            continue
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(color, dtype=np.float32)
        edge = mask & ~ndimage.binary_erosion(mask)
        rgb[edge] = color
    return rgb.astype(np.uint8)


def _slice(array, axis, index):
    return np.take(array, index, axis=axis)


def _display_slice(array2d, spacing_rows, spacing_cols):
    """Resize a slice so pixels are square (for thick-slice scans)."""
    h, w = array2d.shape
    scale_rows = spacing_rows / min(spacing_rows, spacing_cols)
    scale_cols = spacing_cols / min(spacing_rows, spacing_cols)
    return (int(round(w * scale_cols)), int(round(h * scale_rows)))


def overlay_sheet(image, labelmap, labels, path, n_slices=12, columns=4, tile=256, title=None):
    """Write a PNG grid of ``n_slices`` evenly spaced slices (where bone is) with the overlay."""
    import SimpleITK as sitk

    volume = sitk.GetArrayFromImage(image)
    label_array = sitk.GetArrayFromImage(labelmap)
    axis = acquisition_axis(image)
    spacing = np.array(image.GetSpacing())[::-1]  # numpy order
    in_plane = [a for a in range(3) if a != axis]
    has_bone = np.flatnonzero(label_array.any(axis=tuple(in_plane)))
    lo, hi = (has_bone[0], has_bone[-1]) if len(has_bone) else (0, volume.shape[axis] - 1)
    indices = np.unique(np.linspace(lo, hi, n_slices).round().astype(int))
    colors = {label.value: label.color for label in labels}
    gray = _to_uint8(volume)
    tiles = []
    for index in indices:
        rgb = blend(_slice(gray, axis, index), _slice(label_array, axis, index), colors)
        size = _display_slice(rgb[..., 0], spacing[in_plane[0]], spacing[in_plane[1]])
        img = Image.fromarray(rgb).resize(size, Image.BILINEAR)
        img.thumbnail((tile, tile))
        canvas = Image.new("RGB", (tile, tile))
        canvas.paste(img, ((tile - img.width) // 2, (tile - img.height) // 2))
        ImageDraw.Draw(canvas).text((4, 4), f"slice {index}", fill=(255, 255, 0))
        tiles.append(canvas)
    rows = int(np.ceil(len(tiles) / columns))
    header = 24 if title else 0
    sheet = Image.new("RGB", (columns * tile, rows * tile + header + LEGEND_HEIGHT), (0, 0, 0))
    if title:
        ImageDraw.Draw(sheet).text((6, 6), title, fill=(255, 255, 255))
    for n, t in enumerate(tiles):
        sheet.paste(t, ((n % columns) * tile, header + (n // columns) * tile))
    draw_legend(sheet, labels)
    return save_png(sheet, path)


def draw_legend(canvas, labels, y=None):
    """Each bone's colour swatch and name along the bottom of ``canvas``: the PNG alone says which is which."""
    draw = ImageDraw.Draw(canvas)
    y = canvas.height - 16 if y is None else y
    x = 6
    for label in labels:
        draw.rectangle((x, y + 2, x + 10, y + 12), fill=tuple(label.color), outline=(255, 255, 255))
        draw.text((x + 14, y + 1), label.name, fill=(255, 255, 255))
        x += 14 + int(draw.textlength(label.name)) + 12
    return canvas


def save_png(picture, path) -> Path:
    """Save a pillow image as PNG atomically (a temporary name beside it, then a rename)."""
    from .io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
