"""Raw-format simulator with ground truth: the default data source when the real datasets are absent.

Writes synthetic Amazon (2014 / 2018 / 2023 formats) and Taobao (Tianchi 56 + 649) raw files,
byte-for-byte in the public files' formats, plus a GloVe-format word-vector file, the true click
probability of every row with the parts of its logit (``ground_truth/<domain>.parquet``), the
users' taste priors (``ground_truth/<dataset>_users.parquet``) and a ``manifest.json``. The planted
structure (shared user tastes over latent topics, topic-clustered title words, a sparse target and
a rich source domain) makes cross-domain transfer real and measurable; see
:mod:`cdanet.simulate.world` for the click model.

>>> manifest = simulate("/tmp/raw", dataset="amazon", scale="tiny")   # doctest: +SKIP
>>> ground_truth_auc("/tmp/raw", "movie")                            # doctest: +SKIP
"""

from cdanet.simulate.amazon import AMAZON_FORMATS
from cdanet.simulate.core import (
    DATASET_CHOICES,
    LABEL_RULES,
    MANIFEST_FILENAME,
    SimulationManifest,
    ground_truth_auc,
    ground_truth_path,
    load_ground_truth,
    load_user_prior,
    simulate,
    user_prior_path,
)
from cdanet.simulate.sizes import ALL_DOMAINS, DOMAINS, SCALES, SimulationSizes, resolve_sizes

__all__ = [
    "ALL_DOMAINS",
    "AMAZON_FORMATS",
    "DATASET_CHOICES",
    "DOMAINS",
    "LABEL_RULES",
    "MANIFEST_FILENAME",
    "SCALES",
    "SimulationManifest",
    "SimulationSizes",
    "ground_truth_auc",
    "ground_truth_path",
    "load_ground_truth",
    "load_user_prior",
    "resolve_sizes",
    "simulate",
    "user_prior_path",
]
