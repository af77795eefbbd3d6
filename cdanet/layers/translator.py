"""The cross-supervised translator W^tran (paper Sec. 4.2.3, Eq. 5-7)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Translator(nn.Module):
    """A linear map ``W in R^{d x d}`` without bias: ``z' = W z`` (paper Eq. 5-6).

    Initialised orthogonal, the point that L^orth (Eq. 7) pulls it towards, so that early in
    training translation preserves lengths and angles and the cross loss starts from a sensible map.

    Shapes: ``B x d -> B x d`` (rows are samples, so ``W z`` is computed as ``z @ W^T``).
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        if d < 1:
            raise ValueError(f"Translator needs d >= 1, got {d}")
        self.weight = nn.Parameter(torch.empty(d, d))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.weight)

    def forward(self, z: Tensor) -> Tensor:
        """``W z`` for every row: ``B x d -> B x d``."""
        return z @ self.weight.t()

    def transpose(self, z: Tensor) -> Tensor:
        """``W^T z`` for every row (the inverse map when W is orthogonal): ``B x d -> B x d``."""
        return z @ self.weight
