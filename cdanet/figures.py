"""Renders the training pipeline's figures (training curves, reliability diagrams) to PNG and HTML files.

Matplotlib is imported inside the functions with the Agg backend, so importing this module costs
nothing and needs no display. The HTML pages are the templates ``curves.html.j2`` and
``reliability.html.j2`` (:mod:`cdanet.pages`).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from typing import Any

from cdanet import pages
from cdanet.atomic import replacing, write_text

__all__ = ["write_curves_html", "write_reliability"]


def write_curves_html(histories: Mapping[str, list[dict]], target: str, path: str) -> None:
    """Training loss and validation AUC of the target per epoch, one line per stage, as one HTML file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for stage, hist in histories.items():
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist]
        ax_loss.plot(epochs, [h["train_loss"] for h in hist], marker="o", label=stage)
        key = f"val_auc_{target}"
        if key in hist[0]:
            ax_auc.plot(epochs, [h[key] for h in hist], marker="o", label=stage)
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_auc.set(title=f"validation AUC ({target})", xlabel="epoch")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    write_text(path, pages.render("curves.html.j2", png=_png_base64(fig)))


def _png_base64(fig: Any) -> str:
    """The figure as a base64 PNG (for an ``<img>`` data URI); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_reliability(calibrations: Mapping[str, Mapping[str, Any]], png_path: str,
                      html_path: str | None = None) -> None:
    """Reliability diagrams, one panel per domain and one line per model, as a PNG (and an HTML page).

    ``calibrations`` is ``{domain: {model label: cdanet.evaluation.Calibration}}``. The HTML page
    embeds the same plot and adds, per domain and model, logloss against the base-rate logloss, the
    ECE and the bins with their row counts.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = list(calibrations)
    fig, axes = plt.subplots(1, len(domains), figsize=(4.6 * len(domains), 4.2), squeeze=False)
    for ax, domain in zip(axes[0], domains, strict=True):
        models = calibrations[domain]
        hi = 0.0
        for label, cal in models.items():
            r = cal.reliability
            ax.plot(r.mean_predicted, r.observed_rate, marker="o",
                    label=f"{label}: logloss {cal.logloss:.4f}, ECE {cal.ece:.4f}")
            hi = max(hi, *r.mean_predicted, *r.observed_rate)
        base = next(iter(models.values()))
        hi = min(1.0, hi * 1.05 + 0.01)
        ax.plot([0, hi], [0, hi], color="grey", linestyle=":", label="perfectly calibrated")
        ax.axhline(base.base_rate, color="grey", linestyle="--", linewidth=0.8,
                   label=f"base rate = train click rate {base.base_rate:.3f} (logloss {base.base_rate_logloss:.4f})")
        ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="mean predicted probability", ylabel="observed click rate",
               title=f"{domain} (test, {len(base.reliability.count)} equal-mass bins)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    png = _png_base64(fig)
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    with replacing(png_path) as tmp, open(tmp, "wb") as fh:
        fh.write(base64.b64decode(png))
    if html_path is None:
        return
    write_text(html_path, pages.render("reliability.html.j2", png=png, calibrations=calibrations))
