"""An example sheet: synthetic training images beside their bone label contours, for people to look at."""

from pathlib import Path

import numpy as np

from ..labels import SEPARATE_BONES
from ..specs import FrameSpec
from ..writing import atomic_path
from .config import SynthesisConfig
from .synthesizer import SliceSynthesizer


def write_example_sheet(cache_dir, out_png, n: int = 16, seed: int = 0, frame: FrameSpec = FrameSpec(),
                        config: SynthesisConfig = SynthesisConfig()) -> Path:
    """A PNG of ``n`` synthetic training images, each shown plain and with its bone label contours."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    synthesizer = SliceSynthesizer(cache_dir, frame, n_slices_per_sample=1, batch_size=n, seed=seed, config=config)
    x, y, info = synthesizer.batch_with_info(0)
    colours = {bone.value: np.array(bone.color) / 255.0 for bone in SEPARATE_BONES}
    columns = 4
    rows = -(-n // columns)
    figure = Figure(figsize=(columns * 2 * 2.2, rows * 2.4 + 0.3), dpi=100)
    for k in range(n):
        plain = figure.add_subplot(rows, 2 * columns, 2 * k + 1)
        overlay = figure.add_subplot(rows, 2 * columns, 2 * k + 2)
        for ax in (plain, overlay):
            ax.imshow(x[k, ..., 0], cmap="gray", interpolation="nearest")
            ax.set_axis_off()
        for value, colour in colours.items():
            if (y[k] == value).any():
                overlay.contour(y[k] == value, levels=[0.5], colors=[colour], linewidths=1.0)
        plain.set_title(f"{info[k]['plane']} {info[k]['subject']}", fontsize=7, loc="left")
        overlay.set_title(f"{info[k]['pixel_mm']:.2f} mm/px" + (" mirrored" if info[k]["mirrored"] else ""),
                          fontsize=7, loc="left")
    figure.legend(handles=[Line2D([], [], color=colours[b.value], label=b.name) for b in SEPARATE_BONES],
                  loc="upper center", ncol=len(SEPARATE_BONES), fontsize=8, frameon=False)
    figure.subplots_adjust(left=0.01, right=0.99, top=1.0 - 0.45 / figure.get_figheight(), bottom=0.01,
                           wspace=0.03, hspace=0.12)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png")
    return out_png
