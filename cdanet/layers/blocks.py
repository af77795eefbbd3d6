"""Dense building blocks: MLP stacks, prediction towers and a batched bank of expert MLPs.

Shapes use ``B`` for the batch, ``K`` for the number of experts and ``D`` for feature widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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

    ``forward(x)`` is ``rest(first(x))``. :meth:`first` can fold a linear map of the input into the first
    layer's weight: CDAnet scores translated latents ``W z`` (Eq. 5-6) and augmented latents
    ``z ⊕ W z`` (Eq. 10) this way without materialising them.

    Shapes: ``B x in_dim -> B`` (pre-sigmoid logits).
    """

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

    def first(self, x: Tensor, input_map: Tensor | None = None) -> Tensor:
        """The first layer's affine map (before its activation), optionally of ``x @ M^T``.

        With ``input_map`` M (``in_dim x m``), returns ``L1(x @ M^T) = x @ (W1 M)^T + b1``: the small
        ``W1 M`` product replaces a ``B x m x in_dim`` GEMM forward and two backward.

        Shapes: ``B x in_dim`` (``B x m`` with ``input_map``) -> ``B x width`` of the first layer.
        """
        first = self._layers[0]
        assert isinstance(first, nn.Linear)
        weight = first.weight if input_map is None else first.weight @ input_map
        return F.linear(x, weight, first.bias)

    def rest(self, a: Tensor) -> Tensor:
        """Everything after :meth:`first`: ``B x width -> B`` logits."""
        if self.depth == 1:
            return a.squeeze(-1)
        for layer in self._layers[1:]:
            a = layer(a)
        return self.logit(a).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.rest(self.first(x))


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
