"""``simulate()``: write the raw datasets, their ground truth and a manifest."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cdanet.atomic import replacing, write_text
from cdanet.simulate import amazon, taobao
from cdanet.simulate.rawfile import FileReport, TextTable, write_lines, write_table
from cdanet.simulate.sizes import ALL_DOMAINS, DOMAINS, SCALES, resolve_sizes
from cdanet.simulate.world import ClickModel, Population, child_rng

DATASET_CHOICES: tuple[str, ...] = ("amazon", "taobao", "both")
MANIFEST_FILENAME = "manifest.json"
MANIFEST_VERSION = 1
#: How preprocessing turns a raw row into the click label, per domain.
LABEL_RULES: dict[str, str] = {
    "movie": "rating > 3",
    "book": "rating > 3",
    "ad": "clk == 1",
    "rec": "behavior_type == 'buy'",
}
_MAX_FRACTION = 0.5


def ground_truth_path(output_dir: str, domain: str) -> str:
    return os.path.join(output_dir, "ground_truth", f"{domain}.parquet")


def user_prior_path(output_dir: str, dataset: str) -> str:
    return os.path.join(output_dir, "ground_truth", f"{dataset}_users.parquet")


@dataclass
class SimulationManifest:
    """What a simulation wrote; saved as ``<output>/manifest.json``.

    ``files`` maps each relative path to its ``lines`` (every line: header, data, injected),
    ``data_rows`` (valid, non-duplicate rows), ``header``, ``bytes`` and ``duplicates``.
    ``malformed_injected`` maps a relative path to {reason: count} (``blank`` included), so
    ``lines == header + data_rows + duplicates + sum(malformed)`` for every file. ``domains`` gives
    per domain its dataset, raw files by role, ground-truth path, label rule and row statistics.
    """

    seed: int
    dataset: str
    scale: str
    amazon_format: str
    malformed_fraction: float
    duplicate_fraction: float
    glove_dim: int
    gzip: bool
    sizes: dict[str, Any]
    formats: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    malformed_injected: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicates_injected: dict[str, int] = field(default_factory=dict)
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared_users: dict[str, int] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def record(self, report: FileReport) -> str:
        self.files[report.relpath] = {
            "lines": report.lines, "data_rows": report.data_rows, "header": report.header,
            "bytes": report.bytes, "duplicates": report.duplicates,
        }
        if report.malformed:
            self.malformed_injected[report.relpath] = dict(report.malformed)
        if report.duplicates:
            self.duplicates_injected[report.relpath] = report.duplicates
        return report.relpath

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, output_dir: str) -> str:
        return write_text(os.path.join(output_dir, MANIFEST_FILENAME), self.to_json())

    @classmethod
    def load(cls, output_dir: str) -> SimulationManifest:
        path = os.path.join(output_dir, MANIFEST_FILENAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {MANIFEST_FILENAME} in {output_dir}: not a cdanet.simulate output folder")
        try:
            with open(path) as fh:
                data = json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); expected the manifest written by simulate()") from e
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"{path} has manifest version {version!r}; this library reads {MANIFEST_VERSION}")
        try:
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"{path} does not have the fields of a simulation manifest: {e}") from e


def _ids(values: np.ndarray, index: np.ndarray) -> pa.Array:
    """``values[index]`` as an arrow string array; the take runs in arrow, not per Python string."""
    return pa.array(values.astype(str), pa.string()).take(pa.array(index))


def _write_ground_truth(output_dir: str, domain: str, user: pa.Array, item: pa.Array, timestamp: np.ndarray,
                        p_click: np.ndarray, label: np.ndarray, topic: np.ndarray, offset: np.ndarray,
                        click: ClickModel) -> str:
    """Ground truth, one row per valid raw row in file order (duplicates and malformed lines excluded).

    Besides ``p_click`` and ``label``, the parts of the logit (:mod:`cdanet.simulate.world`):
    ``logit(p_click) = offset + taste_weight * taste[user, topic] + activity_weight * activity[user]``
    with ``topic`` the item's latent topic and ``offset`` every item-side, time and bias term.
    """
    n = len(label)
    table = pa.table({
        "user": user,
        "item": item,
        "timestamp": pa.array(timestamp, pa.int64()),
        "p_click": pa.array(p_click, pa.float64()),
        "label": pa.array(label, pa.int64()),
        "topic": pa.array(topic, pa.int64()),
        "offset": pa.array(offset, pa.float64()),
        "taste_weight": pa.array(np.full(n, click.taste_weight), pa.float64()),
        "activity_weight": pa.array(np.full(n, click.activity_weight), pa.float64()),
    })
    path = ground_truth_path(output_dir, domain)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with replacing(path) as tmp:
        pq.write_table(table, tmp)
    return os.path.relpath(path, output_dir)


def _write_user_prior(output_dir: str, dataset: str, user_id: np.ndarray, population: Population,
                      group_known: np.ndarray | None = None) -> str:
    """``ground_truth/<dataset>_users.parquet``: every user's taste prior and true latent values.

    One row per user of the dataset's population: ``prior_mean``/``prior_sd`` (lists over topics,
    see :meth:`Population.taste_prior`), ``activity_prior_sd`` (activity ~ N(0, sd^2)), and the
    drawn ``taste`` (list over topics) and ``activity``.
    """
    mean, sd = population.taste_prior(group_known)
    n_topics = population.taste.shape[1]

    def lists(values: np.ndarray) -> pa.Array:
        flat = pa.array(np.ascontiguousarray(values, dtype=np.float64).ravel(), pa.float64())
        return pa.FixedSizeListArray.from_arrays(flat, n_topics)

    table = pa.table({
        "user": pa.array(user_id.astype(str), pa.string()),
        "prior_mean": lists(mean),
        "prior_sd": lists(sd),
        "activity_prior_sd": pa.array(np.ones(len(user_id)), pa.float64()),
        "taste": lists(population.taste),
        "activity": pa.array(population.activity, pa.float64()),
    })
    path = user_prior_path(output_dir, dataset)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with replacing(path) as tmp:
        pq.write_table(table, tmp)
    return os.path.relpath(path, output_dir)


def _domain_stats(user: np.ndarray, item: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    return {
        "rows": int(len(label)),
        "users": int(len(np.unique(user))),
        "items": int(len(np.unique(item))),
        "positives": int(label.sum()),
        "positive_rate": round(float(label.mean()), 6),
    }


def _validate(dataset: str, scale: str, amazon_format: str, malformed_fraction: float,
              duplicate_fraction: float, glove_dim: int, seed: int) -> None:
    errors = []
    if dataset not in DATASET_CHOICES:
        errors.append(f"unknown dataset {dataset!r}; expected one of {list(DATASET_CHOICES)}")
    if scale not in SCALES:
        errors.append(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    if amazon_format not in amazon.AMAZON_FORMATS:
        errors.append(f"unknown amazon_format {amazon_format!r}; expected one of {list(amazon.AMAZON_FORMATS)}")
    for name, value in (("malformed_fraction", malformed_fraction), ("duplicate_fraction", duplicate_fraction)):
        if not 0.0 <= value < _MAX_FRACTION:
            errors.append(f"{name} must be in [0, {_MAX_FRACTION}), got {value}")
    if not isinstance(glove_dim, int) or glove_dim < 1:
        errors.append(f"glove_dim must be a positive int, got {glove_dim!r}")
    if not isinstance(seed, int) or seed < 0:
        errors.append(f"seed must be a non-negative int, got {seed!r}")
    if errors:
        raise ValueError("invalid simulate() arguments:\n  - " + "\n  - ".join(errors))


def simulate(output_dir: str, dataset: str = "both", scale: str = "small", seed: int = 0,
             amazon_format: str = "2014csv", malformed_fraction: float = 0.0, duplicate_fraction: float = 0.0,
             glove_dim: int = 50, gzip: bool = False, **size_overrides: Any) -> SimulationManifest:
    """Write raw Amazon and/or Taobao files with ground truth under ``output_dir``.

    Layout: ``amazon/`` (ratings + metadata per domain, see :mod:`cdanet.simulate.amazon`),
    ``taobao/`` (:mod:`cdanet.simulate.taobao`), ``glove/glove.sim.<dim>d.txt`` (with Amazon),
    ``ground_truth/<domain>.parquet``, ``ground_truth/<dataset>_users.parquet`` (the users' taste
    priors) and ``manifest.json``. The same arguments give byte-identical
    files, and each dataset's files do not depend on whether the other one is simulated too.

    ``malformed_fraction`` injects that fraction (of each file's valid rows) of malformed lines into
    every raw file except GloVe; ``duplicate_fraction`` adds exact duplicates of interaction rows;
    both are recorded in the manifest. ``gzip`` writes the Amazon ratings/metadata as ``.gz``.
    ``size_overrides`` are fields of :class:`~cdanet.simulate.sizes.SimulationSizes` (e.g.
    ``movie_rows=5000``) or ``n_users`` (users of every domain).
    """
    _validate(dataset, scale, amazon_format, malformed_fraction, duplicate_fraction, glove_dim, seed)
    sizes = resolve_sizes(scale, size_overrides)
    os.makedirs(output_dir, exist_ok=True)
    manifest = SimulationManifest(
        seed=seed, dataset=dataset, scale=scale, amazon_format=amazon_format,
        malformed_fraction=malformed_fraction, duplicate_fraction=duplicate_fraction, glove_dim=glove_dim,
        gzip=gzip, sizes=sizes.to_dict(),
    )

    def write(table: TextTable, compress: bool = False) -> str:
        rng = child_rng(seed, "inject", table.relpath)
        return manifest.record(write_table(output_dir, table, rng, malformed_fraction, duplicate_fraction, compress))

    if dataset in ("amazon", "both"):
        manifest.formats.update({"amazon": amazon_format, "glove": "glove-text"})
        world = amazon.build_world(seed, sizes, amazon_format, glove_dim)
        glove = manifest.record(write_lines(output_dir, f"glove/glove.sim.{glove_dim}d.txt", amazon.glove_lines(world)))
        for domain in DOMAINS["amazon"]:
            d = world.domains[domain]
            ratings = write(amazon.ratings_table(world, domain, seed), gzip)
            meta = write(amazon.meta_table(world, domain), gzip)
            truth = _write_ground_truth(output_dir, domain, _ids(world.user_id, d.rows.user),
                                        _ids(d.items.parent_id, d.rows.item), d.seconds, d.p_click, d.label,
                                        d.items.catalog.topic[d.rows.item], d.offset, d.click)
            manifest.domains[domain] = {
                "dataset": "amazon", "files": {"ratings": ratings, "meta": meta, "glove": glove},
                "ground_truth": truth, "label_rule": LABEL_RULES[domain],
                "items_with_meta": int(d.items.has_meta.sum()),
                **_domain_stats(d.rows.user, d.rows.item, d.label),
            }
        movie_users, book_users = (np.unique(world.domains[x].rows.user) for x in DOMAINS["amazon"])
        manifest.shared_users["amazon"] = int(len(np.intersect1d(movie_users, book_users)))
        _write_user_prior(output_dir, "amazon", world.user_id, world.population)

    if dataset in ("taobao", "both"):
        manifest.formats["taobao"] = "tianchi-56+649"
        tb = taobao.build_world(seed, sizes)
        raw_sample, ad_feature, user_profile, behavior = (write(t) for t in taobao.tables(tb, seed))
        ad, rec = tb.domains["ad"], tb.domains["rec"]
        manifest.domains["ad"] = {
            "dataset": "taobao",
            "files": {"raw_sample": raw_sample, "ad_feature": ad_feature, "user_profile": user_profile},
            "ground_truth": _write_ground_truth(output_dir, "ad", _ids(tb.user_id, ad.rows.user), _ids(tb.ad_id, ad.rows.item),
                                                ad.seconds, ad.p_click, ad.label, ad.topic, ad.offset, ad.click),
            "label_rule": LABEL_RULES["ad"], **_domain_stats(ad.rows.user, ad.rows.item, ad.label),
        }
        manifest.domains["rec"] = {
            "dataset": "taobao", "files": {"behavior": behavior},
            "ground_truth": _write_ground_truth(output_dir, "rec", _ids(tb.user_id, rec.rows.user),
                                                _ids(tb.rec_item_id, rec.rows.item), rec.seconds, rec.p_click,
                                                rec.label, rec.topic, rec.offset, rec.click),
            "label_rule": LABEL_RULES["rec"], **_domain_stats(rec.rows.user, rec.rows.item, rec.label),
        }
        manifest.shared_users["taobao"] = int(len(np.intersect1d(np.unique(ad.rows.user), np.unique(rec.rows.user))))
        # A user's demographic group (hence the prototype in their taste prior) is in the data only
        # through their profile row.
        group_known = np.zeros(len(tb.user_id), dtype=bool)
        group_known[tb.profile_users] = True
        _write_user_prior(output_dir, "taobao", tb.user_id, tb.population, group_known)

    manifest.save(output_dir)
    return manifest


def load_ground_truth(output_dir: str, domain: str) -> pa.Table:
    """The ground-truth table of ``domain`` (columns user, item, timestamp, p_click, label)."""
    if domain not in ALL_DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {list(ALL_DOMAINS)}")
    path = ground_truth_path(output_dir, domain)
    return _read_table(path, f"no ground truth for domain {domain!r} at {path}: run cdanet.simulate with a "
                             f"dataset that includes it (python -m cdanet.simulate --output {output_dir})")


def load_user_prior(output_dir: str, dataset: str) -> pa.Table:
    """The users' taste priors of ``dataset`` (columns user, prior_mean, prior_sd, activity_prior_sd, taste, activity)."""
    if dataset not in DOMAINS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DOMAINS)}")
    path = user_prior_path(output_dir, dataset)
    return _read_table(path, f"no user priors of dataset {dataset!r} at {path}: simulations written before the "
                             f"priors were added lack them; simulate again (python -m cdanet.simulate --output {output_dir})")


def _read_table(path: str, missing: str) -> pa.Table:
    """The parquet table at ``path``; ``FileNotFoundError(missing)`` when there is none."""
    if not os.path.exists(path):
        raise FileNotFoundError(missing)
    return pq.read_table(path)


def ground_truth_auc(output_dir: str, domain: str) -> float:
    """The oracle AUC: ROC AUC of the true ``p_click`` against the sampled labels of ``domain``."""
    # Imported here: scikit-learn takes about a second to import, and writing data never needs it.
    from sklearn.metrics import roc_auc_score

    table = load_ground_truth(output_dir, domain)
    label = table.column("label").to_numpy()
    if label.min() == label.max():
        raise ValueError(f"ground truth of domain {domain!r} in {output_dir} has a single class; AUC is undefined")
    return float(roc_auc_score(label, table.column("p_click").to_numpy()))
