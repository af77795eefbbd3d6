"""STAR layers (Sheng et al. 2021, "One Model to Serve All: Star Topology Adaptive Recommender").

All three take the domain of the rows as an argument: a batch holds the rows of one domain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PartitionedNorm(nn.Module):
    """Partitioned normalisation (STAR Eq. 1).

    ``PN(x) = (gamma * gamma_p) * (x - E_p) / sqrt(Var_p + eps) + (beta + beta_p)``: the moments
    ``E_p``, ``Var_p`` are those of domain p (batch moments in training, per-domain running averages
    in evaluation), the scale and shift combine a shared and a domain-specific part.

    Shapes: ``B x dim -> B x dim``.
    """

    def __init__(self, domains: Sequence[str], dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.domains = tuple(domains)
        self.norms = nn.ModuleDict(
            {dom: nn.BatchNorm1d(dim, eps=eps, momentum=momentum, affine=False) for dom in self.domains}
        )
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.domain_gamma = nn.ParameterDict({dom: nn.Parameter(torch.ones(dim)) for dom in self.domains})
        self.domain_beta = nn.ParameterDict({dom: nn.Parameter(torch.zeros(dim)) for dom in self.domains})

    def forward(self, x: Tensor, domain: str) -> Tensor:
        norm = self.norms[domain]
        if self.training and x.shape[0] == 1:
            # One row has no batch variance (BatchNorm raises); a trailing single-row batch is
            # normalised with the running moments and does not update them.
            normed = F.batch_norm(x, norm.running_mean, norm.running_var, training=False, eps=norm.eps)
        else:
            normed = norm(x)
        return normed * (self.gamma * self.domain_gamma[domain]) + (self.beta + self.domain_beta[domain])


class StarFCN(nn.Module):
    """Star-topology fully connected network (STAR Eq. 2).

    Layer ``l`` of domain p uses ``W_p^* = W^l ⊙ W_p^l`` and ``b_p^* = b^l + b_p^l``: a shared
    (centre) weight multiplied element-wise by the domain's weight. Domain weights start at one and
    domain biases at zero, so every domain starts as the shared network. ReLU follows every layer
    except the last.

    Shapes: ``B x dims[0] -> B x dims[-1]``.
    """

    def __init__(self, domains: Sequence[str], dims: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        if len(dims) < 2 or any(w < 1 for w in dims):
            raise ValueError(f"StarFCN needs >= 2 positive widths (input, ..., output), got {list(dims)}")
        self.domains, self.dims, self.dropout = tuple(domains), tuple(dims), dropout
        pairs = list(zip(dims[:-1], dims[1:], strict=True))
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(o, i)) for i, o in pairs)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(o)) for _, o in pairs)
        self.domain_weights = nn.ModuleDict(
            {dom: nn.ParameterList(nn.Parameter(torch.ones(o, i)) for i, o in pairs) for dom in self.domains}
        )
        self.domain_biases = nn.ModuleDict(
            {dom: nn.ParameterList(nn.Parameter(torch.zeros(o)) for _, o in pairs) for dom in self.domains}
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: Tensor, domain: str) -> Tensor:
        dw, db = self.domain_weights[domain], self.domain_biases[domain]
        n = len(self.weights)
        for i in range(n):
            x = F.linear(x, self.weights[i] * dw[i], self.biases[i] + db[i])
            if i < n - 1:
                x = F.dropout(F.relu(x), self.dropout, self.training)
        return x


class AuxiliaryNetwork(nn.Module):
    """STAR's auxiliary network: a small tower on [domain indicator embedding ⊕ features].

    Its logit is added to the main network's logit, which lets the domain identity shift the
    prediction directly (STAR Sec. 3.4: two fully connected layers).

    Shapes: ``B x in_dim -> B`` (logits).
    """

    def __init__(self, domains: Sequence[str], in_dim: int, hidden: int, indicator_dim: int = 8) -> None:
        super().__init__()
        self.domains = tuple(domains)
        self.indicator = nn.Embedding(len(self.domains), indicator_dim)
        self.hidden = nn.Linear(in_dim + indicator_dim, hidden)
        self.logit = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, domain: str) -> Tensor:
        ind = self.indicator.weight[self.domains.index(domain)].expand(x.shape[0], -1)
        return self.logit(F.relu(self.hidden(torch.cat([x, ind], dim=1)))).squeeze(-1)
