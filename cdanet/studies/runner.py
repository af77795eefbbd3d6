"""Executing runs: one ``run_experiment`` per run, cached on disk, with a progress display.

Each run writes into ``<runs_dir>/<run_id>/`` (model directory, test predictions, metrics, history)
and finishes by writing ``record.json``. A run whose record exists with the same config is not
trained again, so an interrupted study resumes where it stopped and ``all`` trains each distinct
config once. A run that raises is recorded as failed (and retried on the next invocation) instead of
aborting the study: one diverging configuration of a 100-run sweep must not discard the other 99.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cdanet.atomic import write_json
from cdanet.studies.plan import Run

logger = logging.getLogger(__name__)

RECORD_FILENAME = "record.json"
STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclass
class RunRecord:
    """The outcome of one run.

    ``val_auc`` is the target domain's best validation AUC of the run's final stage (what early
    stopping and Table 2's grid search select on); ``test`` holds the test metrics of every domain
    the final model scores (``{domain: {auc, logloss, n, positive_rate}}``).
    """

    run_id: str
    label: str
    target_domain: str
    status: str
    val_auc: float = math.nan
    test: dict[str, dict[str, float]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def metric(self, name: str, domain: str | None = None) -> float:
        """A test metric of ``domain`` (default: the target); NaN when the run failed or lacks it."""
        return float(self.test.get(domain or self.target_domain, {}).get(name, math.nan))

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("cached")
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "run record") -> RunRecord:
        try:
            d = json.loads(text)
            d.pop("cached", None)
            return cls(**d)
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{source} is not a run record ({type(e).__name__}: {e})") from e


def execute_run(run: Run, processed_root: str, run_dir: str) -> RunRecord:
    """Train and test ``run`` into ``run_dir``; a failure is returned as a failed record, not raised."""
    from cdanet.training import run_experiment

    cfg = run.experiment_config()
    started = time.perf_counter()
    try:
        result = run_experiment(cfg, processed_root, run_dir)
    except Exception as e:  # any failure of this run (divergence, degenerate split, OOM) is recorded
        logger.warning("run %s (%s) failed", run.run_id, run.label, exc_info=True)
        return RunRecord(run.run_id, run.label, cfg.target_domain, STATUS_FAILED,
                         seconds=time.perf_counter() - started, error=f"{type(e).__name__}: {e}")
    final = list(result.stages.values())[-1]
    return RunRecord(
        run_id=run.run_id, label=run.label, target_domain=cfg.target_domain, status=STATUS_OK,
        val_auc=float(final.best_val_auc), test=result.test.to_dict(),
        stages={name: {"best_epoch": r.best_epoch, "best_val_auc": r.best_val_auc, "epochs": len(r.history)}
                for name, r in result.stages.items()},
        seconds=time.perf_counter() - started,
    )


def load_cached(run: Run, run_dir: str) -> RunRecord | None:
    """The successful record of ``run`` in ``run_dir``, or None (absent, failed, or another config)."""
    path = os.path.join(run_dir, RECORD_FILENAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            stored = json.load(fh)
        if stored.get("config") != run.config:
            return None
        record = RunRecord.from_json(json.dumps(stored["record"]), source=path)
    except (json.JSONDecodeError, KeyError, AttributeError, ValueError):
        logger.warning("%s is unreadable; training run %s again", path, run.run_id)
        return None
    if not record.ok:
        return None
    record.cached = True
    record.label = run.label
    return record


def _save(run: Run, record: RunRecord, run_dir: str) -> None:
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, RECORD_FILENAME),
               {"config": run.config, "record": json.loads(record.to_json())})


def format_record(record: RunRecord) -> str:
    """One progress line: ``label: test AUC 0.7012 (val 0.7100) 12.3s``."""
    if not record.ok:
        return f"{record.label}: FAILED {record.error.splitlines()[0] if record.error else ''}"
    how = "cached" if record.cached else f"{record.seconds:.1f}s"
    return (f"{record.label}: test AUC {record.metric('auc'):.4f} logloss {record.metric('logloss'):.4f} "
            f"(val AUC {record.val_auc:.4f}) {how}")


def run_many(
    runs: Sequence[Run],
    processed_root: str,
    runs_dir: str,
    *,
    progress: bool = True,
    desc: str = "runs",
    execute: Callable[[Run, str, str], RunRecord] = execute_run,
) -> dict[str, RunRecord]:
    """Execute ``runs`` one after the other (each already uses every core / the GPU).

    With ``progress`` a tqdm bar counts runs on stderr and one line per finished run shows its AUC;
    without it the same lines go to the log. Returns ``{run_id: record}``.
    """
    from tqdm.auto import tqdm

    records: dict[str, RunRecord] = {}
    bar = tqdm(total=len(runs), desc=desc, unit="run", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        for run in runs:
            run_dir = os.path.join(runs_dir, run.run_id)
            record = load_cached(run, run_dir)
            if record is None:
                if os.path.exists(run_dir):  # an interrupted or failed attempt: start clean
                    shutil.rmtree(run_dir)
                bar.set_postfix_str(run.label, refresh=True)
                record = execute(run, processed_root, run_dir)
                _save(run, record, run_dir)
            records[run.run_id] = record
            line = format_record(record)
            if progress:
                bar.write(line, file=sys.stderr)
            else:
                logger.info(line)
            bar.update(1)
    finally:
        bar.close()
    return records
