"""Apache Beam preprocessing: raw Amazon / Taobao files -> the data contract of ``cdanet.contract``.

Steps, each a composable ``PTransform`` (see ``docs/preprocessing.md``): parse with dead letters
(:mod:`.io`, :mod:`.formats`), labels and duplicates (:mod:`.interactions`), k-core to the fixed
point (:mod:`.kcore`), feature joins (:mod:`.join`), GloVe title vectors (:mod:`.glove`),
chronological split (:mod:`.split`), vocabularies and encoding (:mod:`.vocab`), chained per domain
by the composites of :mod:`.composites`. The driver :func:`run_preprocessing` (:mod:`.pipeline`)
runs them through staged files (:mod:`.staging`), files their counts as typed stats
(:mod:`.stats`), writes the contract files (:mod:`.outputs`) and reports progress, with Beam's own
output kept off the console and errors as one line (:mod:`.progress`).
"""

from cdanet.preprocessing.progress import beam_import_quietly

with beam_import_quietly():
    import apache_beam  # noqa: F401 - first import here, without Beam's notes about optional GCP clients

from cdanet.preprocessing.composites import FeaturizeDomain, IngestDomain  # noqa: E402
from cdanet.preprocessing.domains import LAYOUTS, DomainLayout, FieldSource  # noqa: E402
from cdanet.preprocessing.formats import Malformed, discover  # noqa: E402
from cdanet.preprocessing.glove import GloveVectors, TitleVectors, read_glove, tokenize  # noqa: E402
from cdanet.preprocessing.interactions import BinariseLabels, Deduplicate, LabelRule, TimeWindow  # noqa: E402
from cdanet.preprocessing.io import ParseLines, ReadLineChunks, WriteDeadLetters  # noqa: E402
from cdanet.preprocessing.join import JoinFeatures  # noqa: E402
from cdanet.preprocessing.kcore import KCoreFilter, kcore_reference  # noqa: E402
from cdanet.preprocessing.options import (  # noqa: E402
    DEFAULT_K_CORE,
    AmazonFieldMapping,
    PreprocessingError,
    PreprocessOptions,
)
from cdanet.preprocessing.pipeline import default_beam_args, run_preprocessing  # noqa: E402
from cdanet.preprocessing.progress import Progress  # noqa: E402
from cdanet.preprocessing.split import ChronologicalSplit  # noqa: E402
from cdanet.preprocessing.vocab import BuildVocabularies, EncodeFeatures  # noqa: E402

__all__ = [
    "DEFAULT_K_CORE", "LAYOUTS", "AmazonFieldMapping", "BinariseLabels", "BuildVocabularies", "ChronologicalSplit",
    "Deduplicate", "DomainLayout", "EncodeFeatures", "FeaturizeDomain", "FieldSource", "GloveVectors",
    "IngestDomain", "JoinFeatures", "KCoreFilter", "LabelRule", "Malformed", "ParseLines", "PreprocessOptions",
    "PreprocessingError", "Progress", "ReadLineChunks", "TimeWindow", "TitleVectors", "WriteDeadLetters", "default_beam_args",
    "discover", "kcore_reference", "read_glove", "run_preprocessing", "tokenize",
]
