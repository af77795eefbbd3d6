"""The pipeline's figures: sensible axes, the kept validation marked, real PNG files."""

from __future__ import annotations

import numpy as np

from cdanet.evaluation import roc_curve_points
from cdanet.figures import curves_figure, write_curves_html, write_roc

PNG = b"\x89PNG\r\n\x1a\n"


def _history(aucs: list[float], per_epoch: int) -> list[dict]:
    return [{"epoch": (i + 1) / per_epoch, "train_loss": 0.5 - 0.01 * i, "val_auc_movie": a} for i, a in enumerate(aucs)]


def test_curves_tick_whole_epochs_and_ring_the_kept_validation():
    import matplotlib.pyplot as plt

    hist = _history([0.60, 0.64, 0.66, 0.65, 0.63, 0.62, 0.61], per_epoch=5)  # epochs 0.2 .. 1.4
    fig = curves_figure({"stage 2": hist}, "movie")
    try:
        fig.canvas.draw()
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
        ax_auc = fig.axes[1]
        kept = [line for line in ax_auc.get_lines() if "kept" in line.get_label()]
        assert len(kept) == 1
        assert kept[0].get_xdata()[0] == 0.6 and kept[0].get_ydata()[0] == 0.66
        assert "0.6600" in kept[0].get_label()
    finally:
        plt.close(fig)


def test_curves_and_roc_are_written_as_png(tmp_path):
    html, png = tmp_path / "curves.html", tmp_path / "sub" / "curves.png"
    write_curves_html({"stage 1": _history([0.6, 0.62], 1), "stage 2": []}, "movie", str(html), str(png))
    assert png.read_bytes()[:8] == PNG and "data:image/png;base64," in html.read_text()

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1)
    roc_png = tmp_path / "roc.png"
    write_roc({"candidate": (roc_curve_points(labels, scores), 0.8)}, "movie", str(roc_png))
    assert roc_png.read_bytes()[:8] == PNG
