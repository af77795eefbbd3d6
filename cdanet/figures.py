"""Renders the training pipeline's figures (training curves, reliability diagrams) to PNG and HTML files.

Matplotlib is imported inside the functions with the Agg backend, so importing this module costs
nothing and needs no display.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from typing import Any

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
    write_text(path, _html_page("CDAnet training curves", f"<img src='data:image/png;base64,{_png_base64(fig)}'/>"))


def _png_base64(fig: Any) -> str:
    """The figure as a base64 PNG (for an ``<img>`` data URI); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _html_page(title: str, body: str) -> str:
    return f"<html><body><h3>{title}</h3>{body}</body></html>"


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
    parts = [f"<img src='data:image/png;base64,{png}'/>",
             "<table border='1' cellpadding='3'><tr><th>domain</th><th>model</th><th>logloss</th>"
             "<th>base-rate logloss</th><th>beats base rate</th><th>ECE</th></tr>"]
    for domain, models in calibrations.items():
        for label, cal in models.items():
            parts.append(f"<tr><td>{domain}</td><td>{label}</td><td>{cal.logloss:.4f}</td>"
                         f"<td>{cal.base_rate_logloss:.4f}</td><td>{'yes' if cal.beats_base_rate else 'NO'}</td>"
                         f"<td>{cal.ece:.4f}</td></tr>")
    parts.append("</table>")
    for domain, models in calibrations.items():
        for label, cal in models.items():
            r = cal.reliability
            rows = "".join(
                f"<tr><td>{i + 1}</td><td>{lo:.4f} - {up:.4f}</td><td>{p:.4f}</td><td>{o:.4f}</td><td>{n}</td></tr>"
                for i, (lo, up, p, o, n) in enumerate(zip(r.bin_lower, r.bin_upper, r.mean_predicted,
                                                          r.observed_rate, r.count, strict=True))
            )
            parts.append(f"<h4>{domain}: {label}</h4><table border='1' cellpadding='3'><tr><th>bin</th>"
                         "<th>score range</th><th>mean predicted</th><th>observed click rate</th><th>rows</th></tr>"
                         f"{rows}</table>")
    write_text(html_path, _html_page("Calibration on the test split (reliability diagrams)", "".join(parts)))
