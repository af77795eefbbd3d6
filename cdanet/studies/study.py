"""The studies as functions: ``study(processed_root, output_dir, spec, progress) -> result frame``.

Each writes its files into ``output_dir`` (``<study>.csv``, ``<study>.md`` and, for the figures,
``<study>.png``) and keeps the trained runs under ``output_dir/runs/<run_id>/``; runs are cached
there, so studies that share a config (and a re-run after an interruption) reuse them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from cdanet.config import DATASETS
from cdanet.contract import DomainSchema, SchemaError, load_schemas
from cdanet.studies import report
from cdanet.studies.oracle import OracleAUC, oracle_aucs
from cdanet.studies.plan import check_studies, plan_study, run_id_of
from cdanet.studies.reference_rows import ReferenceScore, reference_scores, references_frame
from cdanet.studies.runner import run_many
from cdanet.studies.spec import STUDIES, StudySpec

logger = logging.getLogger(__name__)

RUNS_DIRNAME = "runs"


def infer_dataset(processed_root: str) -> str:
    """The dataset whose two domain folders (with ``schema.json``) are under ``processed_root``."""
    found = [name for name, domains in DATASETS.items()
             if all(os.path.exists(os.path.join(processed_root, d, "schema.json")) for d in domains)]
    if len(found) != 1:
        expected = "; ".join(f"{n}: {'/'.join(d)}" for n, d in DATASETS.items())
        raise FileNotFoundError(
            f"cannot tell the dataset of {processed_root}: found {found or 'no'} complete dataset(s); expected the "
            f"processed output of one dataset, <processed>/<domain>/schema.json for both domains ({expected}); "
            "pass --dataset"
        )
    return found[0]


def check_processed(processed_root: str, spec: StudySpec) -> dict[str, DomainSchema]:
    """Fail before any training when the processed data does not belong to the spec's dataset."""
    schemas = load_schemas(processed_root, DATASETS[spec.dataset])
    wrong = {d: s.dataset for d, s in schemas.items() if s.dataset != spec.dataset}
    if wrong:
        raise SchemaError(f"{processed_root} holds dataset(s) {wrong}, but the study spec is for {spec.dataset!r}")
    return schemas


def write_study_outputs(study: str, df: pd.DataFrame, output_dir: str, dataset: str,
                        oracle: dict[str, OracleAUC] | None = None,
                        references: Mapping[str, Sequence[ReferenceScore]] | None = None) -> dict[str, str]:
    """Write ``<study>.csv``, ``<study>.md``, ``<study>_references.csv`` (with references or an oracle)
    and (figures) ``<study>.png``; return ``{kind: path}``."""
    paths = {
        "csv": report.write_csv(df, os.path.join(output_dir, f"{study}.csv")),
        "markdown": report.write_text(report.study_markdown(study, df, dataset, oracle, references),
                                      os.path.join(output_dir, f"{study}.md")),
    }
    if references or oracle:
        paths["references"] = report.write_csv(references_frame(references or {}, oracle),
                                               os.path.join(output_dir, f"{study}_references.csv"))
    if study == "fig5":
        paths["png"] = report.plot_fig5(df, os.path.join(output_dir, "fig5.png"), oracle)
    elif study == "fig6":
        paths["png"] = report.plot_fig6(df, os.path.join(output_dir, "fig6.png"), oracle)
    return paths


def run_training_study(study: str, processed_root: str, output_dir: str, spec: StudySpec | None = None,
                       progress: bool = True, *, oracle_from: str | None = None) -> pd.DataFrame:
    """Plan, train (or reuse) every run of ``study``, and write its CSV / Markdown / PNG.

    The tables get the reference rows of :mod:`cdanet.studies.reference_rows` (item popularity and
    id-only LR always; the learnable ceilings and the oracle with ``oracle_from``).
    """
    spec = (spec or StudySpec()).validate()
    check_processed(processed_root, spec)
    plan = plan_study(study, spec)
    records = run_many(list(plan.runs.values()), processed_root, os.path.join(output_dir, RUNS_DIRNAME),
                       progress=progress, desc=study)
    oracle = oracle_aucs(oracle_from, processed_root, spec.target_domains)
    references = reference_scores(processed_root, spec.target_domains, oracle_from)
    df = report.results_frame(plan, records, oracle)
    paths = write_study_outputs(study, df, output_dir, spec.dataset, oracle, references)
    _announce(progress, study, paths)
    return df


def table2(processed_root: str, output_dir: str, spec: StudySpec | None = None, progress: bool = True,
           *, oracle_from: str | None = None) -> pd.DataFrame:
    """Table 2: every model with each domain as target over the seeds (grid-searched on validation AUC)."""
    return run_training_study("table2", processed_root, output_dir, spec, progress, oracle_from=oracle_from)


def table5(processed_root: str, output_dir: str, spec: StudySpec | None = None, progress: bool = True,
           *, oracle_from: str | None = None) -> pd.DataFrame:
    """Table 5: the five ablations of CDAnet next to the full model."""
    return run_training_study("table5", processed_root, output_dir, spec, progress, oracle_from=oracle_from)


def fig5(processed_root: str, output_dir: str, spec: StudySpec | None = None, progress: bool = True,
         *, oracle_from: str | None = None) -> pd.DataFrame:
    """Fig. 5: test AUC against the fraction of the target's training split (validation/test fixed)."""
    return run_training_study("fig5", processed_root, output_dir, spec, progress, oracle_from=oracle_from)


def fig6(processed_root: str, output_dir: str, spec: StudySpec | None = None, progress: bool = True,
         *, oracle_from: str | None = None) -> pd.DataFrame:
    """Fig. 6: CDAnet's sensitivity to alpha, beta and K (one varied at a time)."""
    return run_training_study("fig6", processed_root, output_dir, spec, progress, oracle_from=oracle_from)


def translation_model_dir(processed_root: str, output_dir: str, spec: StudySpec, progress: bool = True) -> str:
    """A trained stage-1 CDAnet for Table 4 under ``output_dir/runs/``, trained once and then reused."""
    from cdanet.training import pretrain

    cfg = spec.base_config(spec.table4_target, "cdanet").with_overrides({"train.seed": spec.table4.seed})
    path = os.path.join(output_dir, RUNS_DIRNAME, f"table4-{run_id_of(cfg)}", "translation")
    if os.path.exists(os.path.join(path, "weights.pt")):
        return path  # model directories are written atomically: present means complete
    _say(progress, f"table4: training the translation network (stage 1) with target {cfg.target_domain!r}")
    result = pretrain(cfg, processed_root, path)
    _say(progress, f"table4: translation network done, best validation AUC {result.best_val_auc:.4f}")
    return path


def table4(processed_root: str, output_dir: str, spec: StudySpec | None = None, progress: bool = True,
           *, model_dir: str | None = None) -> pd.DataFrame:
    """Table 4: titles of the nearest source items of translated target latents (paper Sec. 5.3).

    ``model_dir`` is a translation-network model directory (e.g. the training pipeline's
    ``pretrained`` artifact); without it one is trained with the spec's CDAnet config.
    """
    from cdanet.artifacts import load_model_dir
    from cdanet.data import load_split
    from cdanet.studies.semantics import attach_titles, load_titles, table4_markdown, translated_neighbours

    spec = (spec or StudySpec()).validate()
    schemas = check_processed(processed_root, spec)
    model_dir = model_dir or translation_model_dir(processed_root, output_dir, spec, progress)
    loaded = load_model_dir(model_dir, expected_schemas=schemas)
    if loaded.meta.get("kind") != "translation":
        raise ValueError(
            f"{model_dir} holds a {loaded.meta.get('kind')!r} model; Table 4 needs a translation network "
            "(stage 1: it keeps both domains' embeddings and translators), e.g. the pipeline's `pretrained` artifact"
        )
    if set(loaded.cfg.domains) != set(DATASETS[spec.dataset]):
        raise ValueError(f"{model_dir} was trained on domains {list(loaded.cfg.domains)}, not on the spec's "
                         f"dataset {spec.dataset!r} {list(DATASETS[spec.dataset])}")
    t4, target = spec.table4, spec.table4_target
    train = {d: load_split(processed_root, schemas[d], "train") for d in loaded.model.cfg.domains}
    df = translated_neighbours(loaded.model, train, target, k=t4.k, users=t4.users,
                               items_per_user=t4.items_per_user, pool=t4.pool, seed=t4.seed)
    source = loaded.model.other(target)
    target_titles, source_titles = load_titles(processed_root, target), load_titles(processed_root, source)
    df = attach_titles(df, target_titles, source_titles)
    paths = {
        "csv": report.write_csv(df, os.path.join(output_dir, "table4.csv")),
        "markdown": report.write_text(
            table4_markdown(df, k=t4.k, pool=t4.pool, titles=bool(target_titles and source_titles)),
            os.path.join(output_dir, "table4.md")),
    }
    _announce(progress, "table4", paths)
    return df


STUDY_FUNCTIONS = {"table2": table2, "table5": table5, "fig5": fig5, "fig6": fig6, "table4": table4}


def run_studies(studies: Iterable[str], processed_root: str, output_dir: str, spec: StudySpec | None = None,
                progress: bool = True, *, oracle_from: str | None = None,
                model_dir: str | None = None) -> dict[str, pd.DataFrame]:
    """Run several studies into one ``output_dir`` (sharing cached runs); ``{study: result frame}``."""
    spec = (spec or StudySpec()).validate()
    results: dict[str, pd.DataFrame] = {}
    for study in check_studies(studies, STUDIES):
        if study == "table4":
            results[study] = table4(processed_root, output_dir, spec, progress, model_dir=model_dir)
        else:
            results[study] = STUDY_FUNCTIONS[study](processed_root, output_dir, spec, progress,
                                                    oracle_from=oracle_from)
    return results


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)
    else:
        logger.info(line)


def _announce(progress: bool, study: str, paths: dict[str, str]) -> None:
    _say(progress, f"{study}: wrote " + ", ".join(paths.values()))
