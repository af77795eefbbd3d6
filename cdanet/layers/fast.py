"""The one switch between the blocks' equation forms and their fast implementations of the same functions.

Each block computes its equation literally unless its fast path is on:

* :class:`~cdanet.layers.Tower` (``folded_maps``): a translator folded into the first layer, ``W1 (W z) =
  (W1 W) z``, and a stage-1 tower's two row sets scored in one pass;
* :class:`~cdanet.layers.Translator` (``gram_orth``): L^orth (Eq. 7) in Gram form, ``<A, Z^T Z> / B``;
* :class:`~cdanet.layers.DomainEmbedding` (``sparse_rows``): the table's gradient as the sparse rows a
  step looked up instead of a dense ``R x width`` tensor; only optimisers that take sparse gradients
  (:class:`cdanet.training.optim.TableAdam`) can use it, so it is off until the trainer turns it on.

``tests/test_layers.py`` checks every fast path against its equation form (values and gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cdanet.layers.blocks import Tower
from cdanet.layers.embeddings import DomainEmbedding
from cdanet.layers.translator import Translator


@dataclass(frozen=True)
class FastPaths:
    """Which fast implementations the blocks use. The defaults are what a freshly built block uses."""

    folded_maps: bool = True
    gram_orth: bool = True
    sparse_rows: bool = False

    @classmethod
    def none(cls) -> FastPaths:
        """Every block as its equation: the reference the fast paths are tested against."""
        return cls(folded_maps=False, gram_orth=False, sparse_rows=False)


def set_fast_paths(model: nn.Module, paths: FastPaths) -> None:
    """Switch every block of ``model`` (itself included) to the implementations ``paths`` selects."""
    for module in model.modules():
        if isinstance(module, Tower):
            module.fast = paths.folded_maps
        elif isinstance(module, Translator):
            module.fast = paths.gram_orth
        elif isinstance(module, DomainEmbedding):
            module.sparse_grad = paths.sparse_rows


def row_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(sparse, dense)``: the lookup tables of ``model``, by the format their gradients now arrive in."""
    tables = [m for m in model.modules() if isinstance(m, DomainEmbedding)]
    return [m.weight for m in tables if m.sparse_grad], [m.weight for m in tables if not m.sparse_grad]
