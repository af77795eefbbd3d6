"""Champion scoring: the registry's champion scores this run's test split, re-encoded into its vocabularies.

The gate step (:func:`cdanet.steps.gate`) calls :func:`score_champion` before it decides, so that the
non-regression check compares candidate and champion on exactly the same rows, each model in its own
encoding. Daily retraining rebuilds the vocabularies, so the champion may have been trained on another
encoding of the same fields. Today's test rows are then re-encoded by raw value into the champion's
vocabularies (:func:`cdanet.data.remap_table`; values the champion never saw become OOV) before it
scores them; only a champion whose fields, field kinds or dense dims differ from today's, or one saved
without vocabularies whose schema differs, is refused with :class:`ChampionIncompatibleError`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from cdanet.contract import (
    DomainSchema,
    SchemaError,
    load_schemas,
    load_vocabularies,
    remap_table,
    structural_differences,
)
from cdanet.evaluation import compute_metrics
from cdanet.registry import CHAMPION_ALIAS, ChampionInfo, get_champion, load_version
from cdanet.serving import CDAnetPyfunc, features_frame, read_rows

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODING_AS_IS",
    "ENCODING_REENCODED",
    "ChampionIncompatibleError",
    "ChampionScore",
    "score_champion",
    "score_version",
]

#: How the champion read the rows (:attr:`ChampionScore.encoding`).
ENCODING_AS_IS = "as is"  # same schema and vocabularies, or no vocabularies to compare (indices kept)
ENCODING_REENCODED = "re-encoded into the champion's vocabularies"


class ChampionIncompatibleError(SchemaError):
    """The champion cannot score the given data: it was trained on a different feature schema."""


@dataclass(frozen=True)
class ChampionScore:
    """What the gate compared against: the champion version and its AUC on this run's rows."""

    name: str
    version: str
    model_uri: str  # models:/<name>/<version>
    domain: str
    split: str
    rows: int
    auc: float
    encoding: str  # ENCODING_AS_IS or ENCODING_REENCODED

    def to_dict(self) -> dict[str, str | int | float]:
        return asdict(self)

    def to_markdown(self) -> str:
        return (f"champion `{self.model_uri}` scored {self.rows} rows of {self.domain}/{self.split} "
                f"({self.encoding}): AUC {self.auc:.4f}")


def score_champion(
    processed_root: str, tracking_uri: str, model_name: str, domain: str, split: str = "test"
) -> ChampionScore | None:
    """The champion's AUC on ``split`` of ``domain`` under ``processed_root``; None without a champion.

    Loads the version behind ``models:/<model_name>@champion`` as data (no code or pickle from the
    artifact store runs: :func:`cdanet.registry.load_version`) and scores every row of the split
    with the served pyfunc's scoring code, so the gate compares candidate and
    champion on exactly the same rows, each model in its own encoding:

    * same schema fingerprint and same vocabularies: the rows are scored as they are;
    * same fields, kinds and dense dims but other vocabularies (daily re-preprocessing): the rows
      are re-encoded by raw value into the champion's vocabularies, values it never saw -> OOV 0;
    * otherwise :class:`ChampionIncompatibleError`, saying what differs and how to proceed: the
      champion scores another domain, its fields / kinds / dense dims differ, or vocabularies
      needed for re-encoding are missing (a champion saved before model directories carried them,
      or processed data without ``vocab/``).
    """
    champion = get_champion(tracking_uri, model_name)
    if champion is None:
        return None
    return score_version(processed_root, tracking_uri, champion, domain, split)


def score_version(
    processed_root: str, tracking_uri: str, champion: ChampionInfo, domain: str, split: str = "test"
) -> ChampionScore:
    """:func:`score_champion` for any registered version (``champion``: e.g. :func:`get_version`).

    The gate scores the champion's drift anchor with it (:mod:`cdanet.gate`).
    """
    model_name = champion.name
    scorer = load_version(tracking_uri, model_name, champion.version)  # data only: no code from the store runs
    if not isinstance(scorer, CDAnetPyfunc):
        raise ChampionIncompatibleError(
            f"champion {champion.model_uri} is a {type(scorer).__name__}, not a CDAnet pyfunc model"
        )
    if scorer.domain != domain:
        raise ChampionIncompatibleError(
            f"champion {champion.model_uri} scores domain {scorer.domain!r}, not {domain!r}"
        )
    schema = load_schemas(processed_root, [domain])[domain]
    table = read_rows(processed_root, schema, split)
    rows, rows_schema, encoding = _in_champion_encoding(table, schema, processed_root, scorer, champion, split)
    scores = scorer.predict_indices(features_frame(rows, rows_schema))
    labels = table.column(schema.label_column).to_numpy()
    auc = compute_metrics(domain, labels, np.asarray(scores)).auc
    logger.info("champion: %s version %s has AUC %.4f on %s/%s (%s)", model_name, champion.version, auc, domain, split,
                encoding)
    return ChampionScore(name=model_name, version=champion.version, model_uri=champion.model_uri, domain=domain,
                         split=split, rows=table.num_rows, auc=float(auc), encoding=encoding)


def _in_champion_encoding(
    table: pa.Table, schema: DomainSchema, processed_root: str, scorer: CDAnetPyfunc, champion: ChampionInfo,
    split: str,
) -> tuple[pa.Table, DomainSchema, str]:
    """``table`` (encoded with the vocabularies under ``processed_root``) in the champion's encoding,
    the schema of that encoding, and how it was obtained (``ENCODING_*``)."""
    domain = schema.domain
    ours = load_vocabularies(processed_root, schema)
    theirs = scorer.vocabularies.get(domain)
    same_schema = schema.fingerprint() == scorer.schema.fingerprint()
    what = f"champion version {champion.version} of {champion.name!r}"
    proceed = (
        f"To proceed, delete the alias to re-baseline (MlflowClient().delete_registered_model_alias("
        f"{champion.name!r}, {CHAMPION_ALIAS!r})): the floor alone then judges the next candidate, which "
        "becomes the champion if blessed"
    )
    if same_schema and ours is not None and theirs is not None and ours == theirs:
        return table, schema, ENCODING_AS_IS
    if same_schema and (ours is None or theirs is None):
        logger.warning(
            "champion: %s has the schema of %s/%s but %s no vocabularies; scoring its indices as they are "
            "(equal sizes cannot prove equal meanings)", what, processed_root, domain,
            "the processed data has" if ours is None else "the champion carries",
        )
        return table, schema, ENCODING_AS_IS
    problems = structural_differences(schema, scorer.schema, names=("this data", "the champion"))
    if problems:
        raise ChampionIncompatibleError(
            f"{what} cannot score {domain}/{split} of {processed_root}, whatever the vocabularies: "
            + "; ".join(problems) + f". It was trained on other features. {proceed}."
        )
    if theirs is None or ours is None:
        diff = f"schema fingerprint {schema.fingerprint()} of domain {domain!r} is not {scorer.schema.fingerprint()}"
        try:
            schema.check_compatible(scorer.schema, f"the schema {what} was trained on")
        except SchemaError as e:  # always, as the fingerprints differ: it names the differing fields
            diff = str(e)
        cause = (
            f"{what} was saved without vocabularies (a model directory written before they were stored, or "
            "trained on data without vocab/ files)"
            if theirs is None
            else f"the processed data at {processed_root}/{domain} has no vocabularies (vocab/<field>.txt)"
        )
        raise ChampionIncompatibleError(
            f"{diff}; {cause}, so the champion's indices cannot be mapped onto this data's. {proceed}, "
            "or re-preprocess with the champion's vocabularies."
        )
    rows = remap_table(table, schema, ours, scorer.schema, theirs, source=f"{processed_root}/{domain}/{split}")
    logger.info("champion: re-encoded %s/%s into the vocabularies of %s", domain, split, what)
    return rows, scorer.schema, ENCODING_REENCODED
