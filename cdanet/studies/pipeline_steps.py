"""The experiments pipeline's steps with plain paths and values (``components/studies.py`` wraps them).

plan -> (ParallelFor) train one run -> (Collected) aggregate into tables and figures; Table 4 in
parallel. The plan is a pure function of (spec, tiny, studies), so the aggregation step re-derives
the cells from the same inputs rather than receiving them, and checks that every run reported back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cdanet.studies import report
from cdanet.studies.oracle import oracle_aucs
from cdanet.studies.plan import Run, check_studies, plan_study, unique_runs
from cdanet.studies.reference_rows import reference_scores
from cdanet.studies.runner import RunRecord, execute_run, format_record
from cdanet.studies.spec import TRAINING_STUDIES, StudySpec
from cdanet.studies.study import table4, write_study_outputs


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, recursively for nested mappings (lists are replaced)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_spec(spec: Mapping[str, Any] | None, tiny: bool) -> StudySpec:
    """The defaults (or the tiny variant) with the pipeline's ``spec`` parameter merged on top.

    ``spec`` has the format of a spec file (docs/studies.md); only the keys given change. A grid in
    ``table2.grid`` replaces the default (empty) grid as a whole.
    """
    spec = dict(spec or {})
    dataset = spec.get("dataset", "amazon")
    base = StudySpec.tiny(dataset) if tiny else StudySpec(dataset=dataset)
    merged = deep_merge(base.to_dict(), spec)
    if "table2" in spec and "grid" in spec["table2"]:
        merged["table2"]["grid"] = spec["table2"]["grid"]
    return StudySpec.from_dict(merged, source="pipeline parameter `spec`")


def plan_runs(spec: Mapping[str, Any] | None, tiny: bool, studies: Sequence[str]) -> list[str]:
    """The distinct runs of ``studies`` as JSON strings (the ParallelFor items)."""
    resolved = resolve_spec(spec, tiny)
    plans = [plan_study(s, resolved) for s in check_studies(studies, TRAINING_STUDIES)]
    return [run.to_json() for run in unique_runs(plans)]


def train_run(run_json: str, processed_root: str) -> str:
    """Train one run in a scratch folder; return its record as JSON (AUCs, validation AUC, error).

    A failing run comes back as a failed record, so the other iterations and the aggregation still
    complete and the tables mark the failure.
    """
    run = Run.from_json(run_json)
    scratch = tempfile.mkdtemp(prefix=f"cdanet-run-{run.run_id}-")
    try:
        record = execute_run(run, processed_root, os.path.join(scratch, "run"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(format_record(record), flush=True)
    return record.to_json()


def aggregate(
    spec: Mapping[str, Any] | None,
    tiny: bool,
    studies: Sequence[str],
    records: Sequence[str],
    processed_root: str,
    oracle_uri: str,
    results_path: str,
    tables_path: str,
    figures_path: str,
) -> dict[str, float]:
    """Write every study's rows (CSV), tables (Markdown) and figures (HTML with embedded PNGs).

    Raises ``KeyError`` when a planned run has no record (an iteration's output went missing).
    """
    resolved = resolve_spec(spec, tiny)
    by_id: dict[str, RunRecord] = {}
    for text in records:
        r = RunRecord.from_json(text)
        by_id[r.run_id] = r
    oracle = oracle_aucs(oracle_uri or None, processed_root, resolved.target_domains)
    references = reference_scores(processed_root, resolved.target_domains, oracle_uri or None)
    frames, markdown, pngs = [], [], []
    scratch = tempfile.mkdtemp(prefix="cdanet-aggregate-")
    try:
        for study in check_studies(studies, TRAINING_STUDIES):
            df = report.results_frame(plan_study(study, resolved), by_id, oracle)
            paths = write_study_outputs(study, df, scratch, resolved.dataset, oracle, references)
            frames.append(df)
            with open(paths["markdown"]) as fh:
                markdown.append(fh.read())
            if "png" in paths:
                pngs.append(paths["png"])
        all_rows = pd.concat(frames, ignore_index=True)
        report.write_csv(all_rows, results_path)
        report.write_text("\n".join(markdown), tables_path)
        notes = [f"{r.label} / {r.domain}: test AUC {r.auc:.4f}, logloss {r.logloss:.4f} ({r.detail})."
                 for scores in references.values() for r in scores]
        notes += [o.describe() for o in oracle.values()]
        if not pngs:
            notes.insert(0, "No figure study (fig5, fig6) was selected; the tables are in the Markdown artifact.")
        report.write_text(report.png_html(pngs, f"CDAnet studies on {resolved.dataset}", notes), figures_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    metrics: dict[str, float] = {"runs": float(len(by_id)),
                                 "failed_runs": float(sum(not r.ok for r in by_id.values()))}
    table2 = all_rows[all_rows["study"] == "table2"]
    if not table2.empty:
        summary = report.auc_summary(table2, ["variant", "target_domain"])
        for row in summary.itertuples(index=False):
            metrics[f"table2_{row.variant}_{row.target_domain}_auc"] = float(row.mean)
    for domain, scores in references.items():
        for r in scores:
            if r.key != "base_rate":
                metrics[f"reference_{r.key}_{domain}_auc"] = float(r.auc)
            metrics[f"reference_{r.key}_{domain}_logloss"] = float(r.logloss)
    return metrics


def semantics(spec: Mapping[str, Any] | None, tiny: bool, processed_root: str, table_path: str,
              neighbours_path: str) -> int:
    """Table 4 into ``table_path`` (Markdown) and ``neighbours_path`` (CSV); returns the number of rows."""
    scratch = tempfile.mkdtemp(prefix="cdanet-table4-")
    try:
        df = table4(processed_root, scratch, resolve_spec(spec, tiny), progress=False)
        shutil.copyfile(os.path.join(scratch, "table4.md"), table_path)
        shutil.copyfile(os.path.join(scratch, "table4.csv"), neighbours_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return len(df)

