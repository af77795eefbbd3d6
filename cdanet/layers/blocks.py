"""Dense building blocks: MLP stacks, prediction towers and a batched bank of expert MLPs.

Shapes use ``B`` for the batch, ``K`` for the number of experts and ``D`` for feature widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdanet.layers.translator import Translator


class MLP(nn.Module):
    """A stack of ``Linear -> ReLU (-> Dropout)`` layers.

    Args:
        in_dim: input width.
        hidden: the output width of each layer; ``len(hidden)`` is the depth (0 gives the identity).
        dropout: dropout probability after each activation.

    Shapes: ``B x in_dim -> B x hidden[-1]`` (``B x in_dim`` when ``hidden`` is empty).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        if in_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"MLP widths must be >= 1, got in_dim={in_dim}, hidden={list(hidden)}")
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Tower(nn.Module):
    """Prediction tower R_d (paper Eq. 5, 6, 8, 11): ``depth - 1`` hidden layers, then the logit layer.

    ``depth`` counts the logit layer, as the paper does ("the prediction tower has 2 layers including
    the logit mapping layer"), so ``depth=1`` is logistic regression on the input.

    Besides ``R(x)`` (:meth:`forward`), the tower scores the inputs CDAnet builds from a translator W:
    :meth:`translated` is ``R(W z)`` (Eq. 5-6), :meth:`augmented` is ``R(z ⊕ W z)`` (Eq. 10-11) and
    :meth:`own_and_translated` is ``(R(x), R(W z))``, the two row sets a stage-1 tower scores (Eq. 8
    and 5/6). Each is written as its equation; with :attr:`fast` (on by default, switched by
    :func:`cdanet.layers.set_fast_paths`) the same function is computed with W folded into the first
    layer (``W1 (W z) = (W1 W) z``: a ``d x d`` product instead of materialising ``W z``) and, for
    :meth:`own_and_translated`, both row sets in one pass after the first layer.

    Shapes: ``B x in_dim -> B`` (pre-sigmoid logits); ``z`` is ``B x d`` for a ``d x d`` W.
    """

    fast: bool = True

    def __init__(self, in_dim: int, hidden: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"tower depth must be >= 1 (it counts the logit layer), got {depth}")
        self.body = MLP(in_dim, [hidden] * (depth - 1), dropout)
        self.logit = nn.Linear(self.body.out_dim, 1)
        self.in_dim, self.depth = in_dim, depth
        # The body's modules, or the logit layer for depth 1, as a tuple: a tuple is not registered as
        # a submodule, so the parameters stay under body.* / logit.* only and state dicts are unchanged.
        self._layers: tuple[nn.Module, ...] = tuple(self.body.net) or (self.logit,)

    def forward(self, x: Tensor) -> Tensor:
        """``R(x)``: ``B x in_dim -> B``."""
        return self.logit(self.body(x)).squeeze(-1)

    def translated(self, z: Tensor, translator: Translator) -> Tensor:
        """``R(W z)`` (Eq. 5-6: a domain's latent scored by the other domain's tower): ``B x d -> B``."""
        if self.fast:
            return self._rest(self._first(z, input_map=translator.weight))
        return self(translator(z))

    def augmented(self, z: Tensor, translator: Translator) -> Tensor:
        """``R(z ⊕ W z)`` (Eq. 10-11), for a tower on ``2d`` inputs: ``B x d -> B``.

        Fast: ``z ⊕ W z = z @ [I ; W]^T``, so ``W1 [z ; W z] = (W1_a + W1_b W) z``: one ``B x d`` GEMM to
        the first layer's width instead of ``W z`` plus a ``B x 2d`` one.
        """
        if self.fast:
            w = translator.weight
            augment_map = torch.cat([torch.eye(w.shape[1], dtype=w.dtype, device=w.device), w])  # 2d x d
            return self._rest(self._first(z, input_map=augment_map))
        return self(torch.cat([z, translator(z)], dim=1))

    def own_and_translated(self, x: Tensor, z: Tensor, translator: Translator) -> tuple[Tensor, Tensor]:
        """``(R(x), R(W z))``: ``B_x x d``, ``B_z x d`` -> ``B_x``, ``B_z``.

        Fast: ``W z`` folded into the first layer (as :meth:`translated`) and the layers after it run
        once on both row sets. With dropout in training, that one pass draws one mask for both row
        sets where the equation form draws one per call: the same distribution, not the same draw.
        """
        if self.fast:
            logits = self._rest(torch.cat([self._first(x), self._first(z, input_map=translator.weight)]))
            return logits[: len(x)], logits[len(x):]
        return self(x), self(translator(z))

    def _first(self, x: Tensor, input_map: Tensor | None = None) -> Tensor:
        # The first layer's affine map (before its activation), of x @ M^T with input_map M
        # (in_dim x m): L1(x @ M^T) = x @ (W1 M)^T + b1. B x in_dim (B x m) -> B x width.
        first = self._layers[0]
        assert isinstance(first, nn.Linear)
        weight = first.weight if input_map is None else first.weight @ input_map
        return F.linear(x, weight, first.bias)

    def _rest(self, a: Tensor) -> Tensor:
        # Everything after _first: B x width -> B logits.
        if self.depth == 1:
            return a.squeeze(-1)
        for layer in self._layers[1:]:
            a = layer(a)
        return self.logit(a).squeeze(-1)


class ExpertBank(nn.Module):
    """``K`` independent expert MLPs with the same shape, evaluated together (paper Eq. 2).

    Each expert is ``layers`` times ``Linear -> ReLU (-> Dropout)`` from ``in_dim`` to ``out_dim``.
    Instead of K separate modules (K small GEMMs and K Python calls per layer), the first layer of
    all experts is one ``Linear(in_dim, K * out_dim)`` because every expert reads the same input, and
    deeper layers keep their weights stacked as ``K x D x D`` and run as one ``baddbmm``. This is the
    same function as K separate MLPs; initialisation matches ``nn.Linear`` per expert.

    Shapes: ``B x in_dim -> K x B x out_dim``.
    """

    def __init__(self, num_experts: int, in_dim: int, out_dim: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"ExpertBank needs num_experts (K) >= 1, got {num_experts}")
        if layers < 1:
            raise ValueError(f"ExpertBank needs layers >= 1, got {layers}")
        self.num_experts, self.in_dim, self.out_dim, self.layers = num_experts, in_dim, out_dim, layers
        self.first = nn.Linear(in_dim, num_experts * out_dim)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_experts, out_dim, out_dim)) for _ in range(layers - 1)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(num_experts, 1, out_dim)) for _ in range(layers - 1)
        )
        self.dropout = dropout
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
        self.first.reset_parameters()
        bound = 1.0 / math.sqrt(self.out_dim)
        for w, b in zip(self.weights, self.biases, strict=True):
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        out = F.relu(self.first(x))
        out = F.dropout(out, self.dropout, self.training)
        # B x (K*D) -> K x B x D: a strided view, bmm reads it without a copy.
        out = out.view(b, self.num_experts, self.out_dim).transpose(0, 1)
        for w, bias in zip(self.weights, self.biases, strict=True):
            out = F.relu(torch.baddbmm(bias, out, w))
            out = F.dropout(out, self.dropout, self.training)
        return out


def mix_experts(experts: Tensor, gates: Tensor) -> Tensor:
    """Gate-weighted sum of expert outputs (paper Eq. 4): ``z = sum_i g^i f^i``.

    Written as K broadcast multiply-adds rather than an einsum: the einsum lowers to a batched
    ``B x D x K`` by ``B x K x 1`` matmul, whose B tiny GEMMs (forward and backward) cost ~5 ms per
    CDAnet step at B = 8192, against well under 1 ms for the elementwise form.

    Shapes: experts ``K x B x D``, gates ``B x K`` -> ``B x D``.
    """
    # unbind, not experts[k]: the backward of unbind stacks the K gradients, while that of each
    # experts[k] would zero-fill a whole K x B x D tensor.
    per_expert = experts.unbind(0)
    mixed = per_expert[0] * gates[:, :1]
    for k in range(1, len(per_expert)):
        mixed = mixed + per_expert[k] * gates[:, k : k + 1]
    return mixed
