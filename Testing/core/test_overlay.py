"""Overlay sheets: the legend shows each bone's colour, the file is written atomically."""

import numpy as np
from PIL import Image

from conftest import toy_knee
from kneeseg.labels import SEPARATE_BONES
from kneeseg.overlay import LEGEND_HEIGHT, overlay_sheet


def test_the_legend_shows_every_bone_colour_below_the_slices(tmp_path):
    image, labels = toy_knee()
    path = overlay_sheet(image, labels, SEPARATE_BONES, tmp_path / "sheet.png", title="toy")
    sheet = np.asarray(Image.open(path).convert("RGB"))
    legend = sheet[-LEGEND_HEIGHT:].reshape(-1, 3)
    colours = {tuple(c) for c in legend}
    for label in SEPARATE_BONES:
        assert tuple(label.color) in colours, label.name
    assert not legend[(legend != 0).any(axis=1)].size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]
