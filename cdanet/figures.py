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

__all__ = ["write_curves_html", "write_reliability", "write_roc"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_curves_html(histories: Mapping[str, list[dict]], target: str, path: str,
                      png_path: str | None = None) -> None:
    """Training loss and validation AUC of the target per epoch, one line per stage, as one HTML file.

    Each point is one validation (several per epoch when ``train.evals_per_epoch`` > 1, so
    epochs can be fractional); the x axis ticks whole epochs only and the validation point that
    early stopping kept (the best validation AUC of each stage) is ringed. With ``png_path`` the same
    plot is also written as a PNG file.
    """
    png = _png_base64(curves_figure(histories, target))
    if png_path is not None:
        _write_png(png_path, png)
    write_text(path, pages.render("curves.html.j2", png=png))


def curves_figure(histories: Mapping[str, list[dict]], target: str) -> Any:
    """The matplotlib figure of :func:`write_curves_html` (the caller closes it)."""
    import math

    from matplotlib.ticker import MultipleLocator

    plt = _pyplot()
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 3.6))
    key = f"val_auc_{target}"
    for stage, hist in histories.items():
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist]
        ax_loss.plot(epochs, [h["train_loss"] for h in hist], marker="o", label=stage)
        if key in hist[0]:
            aucs = [h[key] for h in hist]
            (line,) = ax_auc.plot(epochs, aucs, marker="o", label=stage)
            best = max(range(len(aucs)), key=aucs.__getitem__)
            ax_auc.plot([epochs[best]], [aucs[best]], marker="o", markersize=13, markerfacecolor="none",
                        color=line.get_color(), label=f"{stage}: kept (AUC {aucs[best]:.4f})")
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_auc.set(title=f"validation AUC ({target})", xlabel="epoch")
    last = max((h["epoch"] for hist in histories.values() for h in hist), default=1.0)
    for ax in (ax_loss, ax_auc):
        ax.set_xlim(0, last * 1.05)  # epoch 0 = the start, so at least the ticks 0 and 1 show
        ax.xaxis.set_major_locator(MultipleLocator(max(1, math.ceil(last / 8))))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_roc(curves: Mapping[str, tuple[Any, float]], domain: str, png_path: str) -> None:
    """ROC curves of one domain's test split, one line per model, as a PNG.

    ``curves`` is ``{model label: (cdanet.evaluation.RocCurve, test AUC)}``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for label, (roc, auc) in curves.items():
        ax.plot(roc.fpr, roc.tpr, label=f"{label}: AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random (AUC 0.5)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title=f"ROC, {domain} (test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _write_png(png_path, _png_base64(fig))


def _write_png(path: str, png_base64: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(base64.b64decode(png_base64))


def _png_base64(fig: Any) -> str:
    """The figure as a base64 PNG (for an ``<img>`` data URI); closes the figure."""
    plt = _pyplot()
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
    plt = _pyplot()
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
    _write_png(png_path, png)
    if html_path is None:
        return
    write_text(html_path, pages.render("reliability.html.j2", png=png, calibrations=calibrations))
