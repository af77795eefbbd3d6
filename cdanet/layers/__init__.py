"""Small typed ``nn.Module`` blocks, grouped by role; models in :mod:`cdanet.models` compose them.

* embeddings: :class:`DomainEmbedding` (H_d, Eq. 1)
* blocks: :class:`MLP`, :class:`Tower`, :class:`ExpertBank`, :func:`mix_experts`
* extractors: :class:`Gate`, :class:`MMoE` (Eq. 2-4), :class:`SharedMLPExtractor`, :class:`CGC`, :class:`PLE`
* translator: :class:`Translator` (W^tran, Eq. 5-7)
* star: :class:`PartitionedNorm`, :class:`StarFCN`, :class:`AuxiliaryNetwork`
* fast: :class:`FastPaths`, :func:`set_fast_paths` (the blocks' fast implementations, switched in one place)
"""

from cdanet.layers.blocks import MLP, ExpertBank, Tower, mix_experts
from cdanet.layers.embeddings import COMBINERS, DomainEmbedding
from cdanet.layers.extractors import CGC, PLE, Gate, MMoE, SharedMLPExtractor
from cdanet.layers.fast import FastPaths, row_parameters, set_fast_paths
from cdanet.layers.star import AuxiliaryNetwork, PartitionedNorm, StarFCN
from cdanet.layers.translator import Translator

__all__ = [
    "CGC",
    "COMBINERS",
    "MLP",
    "PLE",
    "AuxiliaryNetwork",
    "DomainEmbedding",
    "ExpertBank",
    "FastPaths",
    "Gate",
    "MMoE",
    "PartitionedNorm",
    "SharedMLPExtractor",
    "StarFCN",
    "Tower",
    "Translator",
    "mix_experts",
    "row_parameters",
    "set_fast_paths",
]
