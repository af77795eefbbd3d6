"""Table 4 (paper Sec. 5.3): measures whether translated latent features keep their meaning across domains.

Following the paper: take the users with positive *training* rows in both domains; compute the
latent features ``z_t`` (Eq. 4) of the target-domain positive rows of a few of them, translate them
into the source space with the learned translator (``z'_s = W_t^tran z_t``, Eq. 5), and find the
``k`` nearest rows (Euclidean) among the source-domain latent features ``Z_s``. With
``pool="users"`` (the paper's choice) ``Z_s`` holds the positive source training rows of all
users with positives in both domains; ``pool="all"`` searches every source training row. A source
item can occur in many rows (different users), so the nearest row of each item stands for it and
the ``k`` nearest *distinct* items are reported. Titles come from ``<processed>/<domain>/items.parquet``
when preprocessing wrote one; otherwise the raw item ids stand in.

Everything is deterministic for a seed: the model is trained with ``train.seed``, users and items
are drawn with ``numpy.random.default_rng(seed)``, and ties in distance break by row order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from cdanet.contract import ITEMS_FILENAME, domain_dir
from cdanet.data import DomainData

logger = logging.getLogger(__name__)

#: Accepted names of the raw item id column of ``items.parquet``, in order of preference.
ITEM_ID_COLUMNS: tuple[str, ...] = ("item_id_raw", "item_id", "asin", "parent_asin", "item")
TITLE_COLUMN = "title"
TABLE4_COLUMNS: tuple[str, ...] = (
    "user_id", "item_id", "title", "rank", "neighbour_item_id", "neighbour_title", "neighbour_user_id",
    "distance", "target_domain", "source_domain",
)


def load_titles(processed_root: str, domain: str) -> dict[str, str]:
    """``{raw item id: title}`` from ``<processed_root>/<domain>/items.parquet``; ``{}`` without titles.

    A missing file or a catalogue without a ``title`` column (Taobao has none) means "no titles";
    a file without a recognisable item id column is an error.
    """
    path = os.path.join(domain_dir(processed_root, domain), ITEMS_FILENAME)
    if not os.path.exists(path):
        return {}
    names = pq.read_schema(path).names
    id_col = next((c for c in ITEM_ID_COLUMNS if c in names), None)
    if id_col is None:
        raise ValueError(f"{path} has no item id column; expected one of {list(ITEM_ID_COLUMNS)}, found {names}")
    if TITLE_COLUMN not in names:
        logger.info("%s has no %r column; Table 4 shows raw item ids", path, TITLE_COLUMN)
        return {}
    table = pq.read_table(path, columns=[id_col, TITLE_COLUMN]).to_pandas()
    table = table[table[TITLE_COLUMN].notna() & (table[TITLE_COLUMN].astype(str).str.strip() != "")]
    return dict(zip(table[id_col].astype(str), table[TITLE_COLUMN].astype(str), strict=True))


@torch.inference_mode()
def latent_rows(model: torch.nn.Module, data: DomainData, rows: np.ndarray, batch_size: int = 8192) -> torch.Tensor:
    """``z_d`` (Eq. 4) of ``rows`` of ``data``: ``len(rows) x d`` float32 on the CPU."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        index = torch.from_numpy(np.ascontiguousarray(rows[start:start + batch_size], dtype=np.int64))
        batch = data.batch(index.to(data.device)).to(device)
        out.append(model.latent(data.domain, batch).float().cpu())
    d = model.cfg.model.d
    return torch.cat(out) if out else torch.empty(0, d)


def translated_neighbours(
    model: torch.nn.Module,
    train: Mapping[str, DomainData],
    target: str,
    *,
    k: int = 5,
    users: int = 3,
    items_per_user: int = 1,
    pool: str = "users",
    seed: int = 0,
) -> pd.DataFrame:
    """The nearest source-domain items of translated target latents (columns :data:`TABLE4_COLUMNS`
    minus titles, which :func:`attach_titles` adds); ``k`` rows per query, ranked 1..k.

    ``model`` is a trained :class:`~cdanet.models.TranslationNetwork`; ``train`` holds the training
    split of both of its domains. Raises ``ValueError`` when no user has positives in both domains.
    """
    if not hasattr(model, "translate") or not hasattr(model, "other"):
        raise TypeError(f"Table 4 needs a TranslationNetwork (stage 1), got {type(model).__name__}")
    source = model.other(target)
    tgt, src = train[target], train[source]
    t_pos = tgt.label.cpu().numpy() > 0.5
    s_pos = src.label.cpu().numpy() > 0.5
    eligible = np.array(sorted(set(tgt.user_ids[t_pos]) & set(src.user_ids[s_pos])), dtype=object)
    if len(eligible) == 0:
        raise ValueError(f"no user has positive training rows in both {target!r} and {source!r}; "
                         "Table 4 analyses such users (paper Sec. 5.3)")
    rng = np.random.default_rng(seed)
    chosen = eligible[rng.choice(len(eligible), size=min(users, len(eligible)), replace=False)]

    query_rows: list[int] = []
    for user in chosen:
        rows = np.flatnonzero(t_pos & (tgt.user_ids == user))
        # The first (earliest) positive row of each item; rows are in chronological order.
        _, first = np.unique(tgt.item_ids[rows], return_index=True)
        rows = rows[np.sort(first)]
        pick = np.sort(rng.choice(len(rows), size=min(items_per_user, len(rows)), replace=False))
        query_rows.extend(int(r) for r in rows[pick])
    if pool == "users":
        pool_rows = np.flatnonzero(s_pos & np.isin(src.user_ids, eligible))
    elif pool == "all":
        pool_rows = np.arange(len(src))
    else:
        raise ValueError(f"unknown pool {pool!r}; expected 'users' or 'all'")

    was_training = model.training
    model.eval()
    try:
        queries = np.asarray(query_rows, dtype=np.int64)
        with torch.inference_mode():
            z_translated = model.translate(target, latent_rows(model, tgt, queries).to(_device(model))).float().cpu()
        z_pool = latent_rows(model, src, pool_rows)
    finally:
        model.train(was_training)
    distances = torch.cdist(z_translated.double(), z_pool.double()).numpy()  # Q x P, float64 for stable ties

    out = []
    for q, row in enumerate(queries):
        seen: set[str] = set()
        for j in np.argsort(distances[q], kind="stable"):
            item = str(src.item_ids[pool_rows[j]])
            if item in seen:
                continue
            seen.add(item)
            out.append({
                "user_id": str(tgt.user_ids[row]), "item_id": str(tgt.item_ids[row]), "rank": len(seen),
                "neighbour_item_id": item, "neighbour_user_id": str(src.user_ids[pool_rows[j]]),
                "distance": float(distances[q, j]), "target_domain": target, "source_domain": source,
            })
            if len(seen) == k:
                break
    return pd.DataFrame(out)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def attach_titles(df: pd.DataFrame, target_titles: Mapping[str, str], source_titles: Mapping[str, str]) -> pd.DataFrame:
    """Add ``title`` / ``neighbour_title``; an item without a title shows its raw id."""
    df = df.copy()
    df["title"] = [target_titles.get(i, i) for i in df["item_id"]]
    df["neighbour_title"] = [source_titles.get(i, i) for i in df["neighbour_item_id"]]
    return df[list(TABLE4_COLUMNS)]


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table4_markdown(df: pd.DataFrame, *, k: int, pool: str, titles: bool) -> str:
    """Paper-style Table 4: the target item's columns are filled on the first of its ``k`` rows only."""
    target, source = df["target_domain"].iloc[0], df["source_domain"].iloc[0]
    pool_text = ("positive source training rows of the users with positives in both domains (paper Sec. 5.3)"
                 if pool == "users" else "all source training rows")
    lines = [f"### Table 4: translated {target} latents and their {k} nearest {source} items", "",
             f"Neighbours: Euclidean distance between W_t z_t (translated into the {source} space) and the "
             f"latent features of {pool_text}; one row per distinct item.", "",
             *([] if titles else ["No item titles in items.parquet: raw item ids are shown.", ""]),
             f"| User ID | {target} item | {target} title | rank | {source} item | {source} title | distance |",
             "|---|---|---|---|---|---|---|"]
    for r in df.itertuples(index=False):
        first = r.rank == 1
        lines.append("| " + " | ".join([
            _md(r.user_id) if first else "", _md(r.item_id) if first else "", _md(r.title) if first else "",
            str(r.rank), _md(r.neighbour_item_id), _md(r.neighbour_title), f"{r.distance:.4f}",
        ]) + " |")
    return "\n".join(lines) + "\n"
