"""From run records to the paper's artefacts: result frames, Markdown tables, PNG figures, HTML.

Everything here is a pure function of the plan, the run records, the references and the oracle, so
the command line and the experiments pipeline's aggregation step produce byte-identical tables from
the same runs.
Figures use matplotlib's object API (``matplotlib.figure.Figure`` renders with Agg), so importing
this module never changes the caller's pyplot backend.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from cdanet import atomic, pages
from cdanet.studies.oracle import OracleAUC
from cdanet.studies.plan import StudyPlan
from cdanet.studies.reference_rows import ORACLE_LABEL, REFERENCE_LABELS, ReferenceScore, reference_cell
from cdanet.studies.runner import RunRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MODEL_LABELS: dict[str, str] = {
    "mlp": "MLP", "share_middle": "ShareMiddle", "star": "STAR", "ddtcdr": "DDTCDR", "mmoe": "MMOE",
    "ple": "PLE", "cdanet": "CDAnet",
}
ABLATION_LABELS: dict[str, str] = {
    "no_mmoe": "w/o MMOE", "no_orth": "w/o L^orth", "no_cross": "w/o L^cross",
    "no_translation": "w/o translation network", "no_augmentation": "w/o augmentation network", "none": "CDAnet",
}
PARAM_LABELS: dict[str, str] = {"alpha": r"$\alpha$ (weight of $\mathcal{L}^{cross}$)",
                                "beta": r"$\beta$ (weight of $\mathcal{L}^{orth}$)",
                                "num_experts": "K (number of experts)", "train_fraction": "train ratio"}

#: Columns of every study's CSV, in order.
RESULT_COLUMNS: tuple[str, ...] = (
    "study", "model", "variant", "param", "value", "target_domain", "source_domain", "seed", "grid_index",
    "grid_point", "selected", "run_id", "status", "val_auc", "test_auc", "test_logloss", "test_rows",
    "seconds", "oracle_auc", "oracle_scope", "error",
)


def results_frame(plan: StudyPlan, records: Mapping[str, RunRecord],
                  oracle: Mapping[str, OracleAUC] | None = None) -> pd.DataFrame:
    """One row per cell of ``plan`` with its run's metrics (columns: :data:`RESULT_COLUMNS`).

    Raises ``KeyError`` naming the run ids that have no record.
    """
    missing = sorted({c.run_id for c in plan.cells} - set(records))
    if missing:
        raise KeyError(f"{plan.study}: no run record for run id(s) {missing}")
    oracle = oracle or {}
    rows = []
    for cell in plan.cells:
        r = records[cell.run_id]
        o = oracle.get(cell.target_domain)
        rows.append({
            "study": cell.study, "model": cell.model, "variant": cell.variant, "param": cell.param,
            "value": math.nan if cell.value is None else cell.value, "target_domain": cell.target_domain,
            "source_domain": cell.source_domain, "seed": cell.seed, "grid_index": cell.grid_index,
            "grid_point": cell.grid_point, "selected": True, "run_id": cell.run_id, "status": r.status,
            "val_auc": r.val_auc, "test_auc": r.metric("auc"), "test_logloss": r.metric("logloss"),
            "test_rows": r.metric("n"), "seconds": round(r.seconds, 3),
            "oracle_auc": o.auc if o else math.nan, "oracle_scope": o.scope if o else "", "error": r.error,
        })
    df = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    return select_grid(df) if plan.study == "table2" else df


def select_grid(df: pd.DataFrame) -> pd.DataFrame:
    """Mark, per (model, target), the grid point with the best mean validation AUC over seeds.

    Ties go to the lower grid index (the first point of the spec's order), so the choice is
    deterministic. Test AUC plays no part in the choice (paper Sec. 5.1.3: grid search, then test).
    """
    df = df.copy()
    df["selected"] = False
    for _, group in df.groupby(["variant", "target_domain"], sort=False):
        ok = group[group["status"] == "ok"]
        if ok.empty:
            best = int(group["grid_index"].min())
        else:
            means = ok.groupby("grid_index")["val_auc"].mean()
            best = int(min(means.index, key=lambda i: (-means[i], i)))
        df.loc[group.index[group["grid_index"] == best], "selected"] = True
    return df


def auc_summary(df: pd.DataFrame, by: Sequence[str], metric: str = "test_auc") -> pd.DataFrame:
    """Mean, std (ddof=1; 0 for one seed), count and failures of ``metric`` per ``by`` over selected rows."""
    sel = df[df["selected"]]
    out = []
    for key, group in sel.groupby(list(by), sort=False, dropna=False):
        ok = group.loc[group["status"] == "ok", metric].to_numpy(dtype=float)
        out.append({
            **dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
            "mean": float(ok.mean()) if len(ok) else math.nan,
            "std": float(ok.std(ddof=1)) if len(ok) > 1 else 0.0,
            "n": int(len(ok)),
            "failed": int(len(group) - len(ok)),
        })
    return pd.DataFrame(out)


def _cell(mean: float, std: float, n: int, failed: int, best: bool) -> str:
    if n == 0:
        return f"failed ({failed} run{'s' if failed != 1 else ''})"
    text = f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"
    if best:
        text = f"**{text}**"
    return text + (f" ({failed} failed)" if failed else "")


def _reference_lines(domains: Sequence[str], metric: str, references: Mapping[str, Sequence[ReferenceScore]],
                     oracle: Mapping[str, OracleAUC], with_base_rate: bool) -> list[str]:
    """Table rows of the references (table order) and the oracle, for ``metric`` ("auc" or "logloss")."""
    by_key: dict[str, dict[str, float]] = {}
    for d in domains:
        for r in references.get(d, ()):
            if r.key != "base_rate" or with_base_rate:
                by_key.setdefault(r.key, {})[d] = getattr(r, metric)
    keys = [k for k in REFERENCE_LABELS if k in by_key] + [k for k in by_key if k not in REFERENCE_LABELS]
    lines = ["| " + " | ".join([REFERENCE_LABELS.get(k, k), *[reference_cell(by_key[k].get(d, math.nan))
                                                              for d in domains]]) + " |" for k in keys]
    if any(d in oracle for d in domains):
        lines.append("| " + " | ".join([ORACLE_LABEL, *[reference_cell(getattr(oracle[d], metric)) if d in oracle
                                                         else "" for d in domains]]) + " |")
    return lines


def _model_rows(df: pd.DataFrame, metric: str, labels: Mapping[str, str], higher_is_better: bool) -> list[str]:
    summary = auc_summary(df, ["variant", "target_domain"], metric)
    variants = list(dict.fromkeys(df["variant"]))
    domains = list(dict.fromkeys(df["target_domain"]))
    sign = 1.0 if higher_is_better else -1.0
    best = {d: (sign * summary.loc[summary["target_domain"] == d, "mean"]).max() for d in domains}
    lines = []
    for v in variants:
        cells = []
        for d in domains:
            row = summary[(summary["variant"] == v) & (summary["target_domain"] == d)]
            if row.empty:
                cells.append("")
                continue
            r = row.iloc[0]
            cells.append(_cell(r["mean"], r["std"], int(r["n"]), int(r["failed"]),
                               bool(r["n"]) and len(variants) > 1 and sign * r["mean"] == best[d]))
        lines.append("| " + " | ".join([labels.get(v, v), *cells]) + " |")
    return lines


def auc_table_markdown(df: pd.DataFrame, *, first_header: str, labels: Mapping[str, str], title: str,
                       oracle: Mapping[str, OracleAUC] | None = None,
                       references: Mapping[str, Sequence[ReferenceScore]] | None = None) -> str:
    """A paper-style table: rows = ``variant`` (in first-seen order), columns = target domains.

    Cells are test AUC mean ± std over the seeds (selected grid points only); the best model mean of
    each column is bold. The reference rows (``references``: item popularity, id-only LR, learnable
    ceilings) and the oracle row follow the models, with footnotes on how each was obtained. A second
    table gives the test logloss of the same rows, with the base rate's (the training positive rate).
    """
    oracle, references = oracle or {}, references or {}
    domains = list(dict.fromkeys(df["target_domain"]))
    seeds = sorted(set(df["seed"]))
    header = ["| " + " | ".join([first_header, *domains]) + " |", "|" + "---|" * (len(domains) + 1)]
    lines = [f"### {title}", "",
             f"Test AUC, mean ± std over seeds {', '.join(map(str, seeds))}; each column is the target domain.", "",
             *header, *_model_rows(df, "test_auc", labels, higher_is_better=True),
             *_reference_lines(domains, "auc", references, oracle, with_base_rate=False)]
    lines += ["", f"Test logloss (lower is better), mean ± std over seeds {', '.join(map(str, seeds))}.", "",
              *header, *_model_rows(df, "test_logloss", labels, higher_is_better=False),
              *_reference_lines(domains, "logloss", references, oracle, with_base_rate=True)]
    notes = [f"{r.label} / {d}: {r.detail}." for d in domains for r in references.get(d, ()) if r.detail]
    if notes:
        lines += ["", "References: fitted on the target's training split, one hyperparameter chosen on its "
                  "validation split; learnable ceilings: the simulator's click model with each user's taste "
                  "inferred (MAP) from their pre-test rows.", "", *[f"- {n}" for n in notes]]
    if oracle:
        lines += ["", *[f"Oracle scope: {oracle[d].describe()}." for d in domains if d in oracle]]
    grid = df[(df["selected"]) & (df["grid_point"] != "{}")]
    if not grid.empty:
        lines += ["", "Selected grid points (best mean validation AUC over seeds):", ""]
        for (v, d), g in grid.groupby(["variant", "target_domain"], sort=False):
            lines.append(f"- {labels.get(v, v)} / {d}: `{g['grid_point'].iloc[0]}`")
    failed = df[df["status"] != "ok"]
    if not failed.empty:
        lines += ["", f"{len(failed)} run(s) failed; see the `error` column of the CSV."]
    return "\n".join(lines) + "\n"


def _panel(ax: Axes, groups: pd.DataFrame, x: str, line_key: str, labels: Mapping[str, str]) -> None:
    for key, g in groups.groupby(line_key, sort=False):
        g = g.sort_values(x)
        ax.errorbar(g[x], g["mean"], yerr=g["std"], marker="o", capsize=3, label=labels.get(key, key))


def _save_png(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_fig5(df: pd.DataFrame, path: str, oracle: Mapping[str, OracleAUC] | None = None) -> str:
    """Fig. 5: test AUC against the train ratio, one panel per target domain, one line per model."""
    from matplotlib.figure import Figure

    summary = auc_summary(df, ["target_domain", "variant", "value"])
    domains = list(dict.fromkeys(df["target_domain"]))
    fig = Figure(figsize=(5.0 * len(domains), 3.8))
    axes = fig.subplots(1, len(domains), squeeze=False)[0]
    for ax, d in zip(axes, domains, strict=True):
        _panel(ax, summary[summary["target_domain"] == d], "value", "variant", MODEL_LABELS)
        if oracle and d in oracle:
            ax.axhline(oracle[d].auc, color="grey", linestyle="--", label="oracle")
        ax.set_title(f"target: {d}")
        ax.set_xlabel("train ratio (fraction of the target's train split)")
        ax.set_ylabel("test AUC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 5: sparsity")
    return _save_png(fig, path)


def plot_fig6(df: pd.DataFrame, path: str, oracle: Mapping[str, OracleAUC] | None = None) -> str:
    """Fig. 6: test AUC against alpha, beta and K, one panel per hyper-parameter, one line per target."""
    from matplotlib.figure import Figure

    summary = auc_summary(df, ["param", "target_domain", "value"])
    params = list(dict.fromkeys(df["param"]))
    fig = Figure(figsize=(4.6 * len(params), 3.8))
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    for ax, p in zip(axes, params, strict=True):
        part = summary[summary["param"] == p]
        _panel(ax, part, "value", "target_domain", {})
        values = part["value"].to_numpy(dtype=float)
        if p in ("alpha", "beta") and len(values) and (values > 0).all() and values.max() / values.min() > 20:
            ax.set_xscale("log")  # the paper sweeps loss weights over orders of magnitude
        if p == "num_experts":
            ax.set_xticks(sorted(set(values.astype(int).tolist())))
        if oracle:
            for d, o in oracle.items():
                ax.axhline(o.auc, color="grey", linestyle="--", linewidth=0.8)
                ax.annotate(f"oracle {d}", (0.01, o.auc), xycoords=("axes fraction", "data"), fontsize=7)
        ax.set_xlabel(PARAM_LABELS.get(p, p))
        ax.set_ylabel("test AUC")
        ax.grid(alpha=0.3)
        ax.legend(title="target", fontsize=8)
    fig.suptitle("Fig. 6: parameter sensitivity of CDAnet")
    return _save_png(fig, path)


def png_html(png_paths: Sequence[str], title: str, notes: Sequence[str] = ()) -> str:
    """A self-contained HTML page with the PNGs embedded (what the KFP UI renders for an HTML artifact)."""
    figures = []
    for path in png_paths:
        with open(path, "rb") as fh:
            figures.append((os.path.basename(path), base64.b64encode(fh.read()).decode("ascii")))
    return pages.render("studies_figures.html.j2", title=title, figures=figures, notes=list(notes))


def write_csv(df: pd.DataFrame, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic.replacing(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def write_text(text: str, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return atomic.write_text(path, text)


def study_markdown(study: str, df: pd.DataFrame, dataset: str,
                   oracle: Mapping[str, OracleAUC] | None = None,
                   references: Mapping[str, Sequence[ReferenceScore]] | None = None) -> str:
    """The Markdown of a training study: Table 2 / Table 5 tables, or a summary table for Fig. 5 / 6."""
    if study == "table2":
        return auc_table_markdown(df, first_header="Model", labels=MODEL_LABELS, oracle=oracle,
                                  references=references, title=f"Table 2: AUC comparison on {dataset}")
    if study == "table5":
        order = [a for a in ABLATION_LABELS if a in set(df["variant"])]  # paper order, CDAnet last
        df = df.assign(_o=df["variant"].map(order.index)).sort_values("_o", kind="stable").drop(columns="_o")
        return auc_table_markdown(df, first_header="Variant", labels=ABLATION_LABELS, oracle=oracle,
                                  references=references, title=f"Table 5: ablations of CDAnet on {dataset}")
    key = "variant" if study == "fig5" else "param"
    summary = auc_summary(df, [key, "target_domain", "value"])
    title = "Fig. 5: sparsity" if study == "fig5" else "Fig. 6: parameter sensitivity"
    lines = [f"### {title} ({dataset})", "",
             f"| {'Model' if study == 'fig5' else 'Parameter'} | target | value | test AUC mean | std | runs |",
             "|---|---|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        label = MODEL_LABELS.get(r[0], r[0]) if study == "fig5" else r[0]
        lines.append(f"| {label} | {r.target_domain} | {r.value:g} | {r.mean:.4f} | {r.std:.4f} | {r.n} |")
    refs = [r for d in dict.fromkeys(df["target_domain"]) for r in (references or {}).get(d, ())]
    if refs:
        lines += ["", "References on the same test rows (fitted on the whole training split):", "",
                  *[f"- {r.label} / {r.domain}: test AUC {r.auc:.4f}, logloss {r.logloss:.4f} ({r.detail})."
                    for r in refs]]
    if oracle:
        lines += ["", *[f"Oracle AUC {o.auc:.4f} ({o.describe()})." for o in oracle.values()]]
    return "\n".join(lines) + "\n"

