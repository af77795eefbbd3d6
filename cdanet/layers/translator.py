"""The cross-supervised translator W^tran (paper Sec. 4.2.3, Eq. 5-7) and its orthogonality terms."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Translator(nn.Module):
    """A linear map ``W in R^{d x d}`` without bias: ``z' = W z`` (paper Eq. 5-6).

    Initialised orthogonal, the point that L^orth (Eq. 7) pulls it towards, so that early in
    training translation preserves lengths and angles and the cross loss starts from a sensible map.

    :meth:`orthogonality_loss` is Eq. 7's term; with :attr:`fast` (on by default, switched by
    :func:`cdanet.layers.set_fast_paths`) it is computed in Gram form, the same function.

    Shapes: ``B x d -> B x d`` (rows are samples, so ``W z`` is computed as ``z @ W^T``).
    """

    fast: bool = True

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

    def orthogonality_loss(self, z: Tensor) -> Tensor:
        """One domain's term of L^orth (Eq. 7): ``||W^T (W z) - z||^2``, summed over d, mean over the batch.

        ``B x d -> scalar``. L^orth is the sum of this over both domains' translators and latents.

        Fast (Gram form): with ``M = W^T W`` and ``A = (M - I)^T (M - I)`` (d x d),
        ``||(M - I) z_i||^2 = z_i^T A z_i``, so the batch mean is ``<A, Z^T Z> / B``: the same value and
        gradients with one ``B x d x d`` GEMM forward and one backward (see :class:`_GramPairing`)
        instead of two and four, and no ``B x d`` temporaries.
        """
        if self.fast:
            w = self.weight
            residual = w.t() @ w - torch.eye(w.shape[1], dtype=w.dtype, device=w.device)  # M - I, d x d
            return _GramPairing.apply(residual.t() @ residual, z)
        return (self.transpose(self(z)) - z).pow(2).sum(dim=1).mean()

    def orthogonality_penalty(self) -> Tensor:
        """``||W^T W - I||_F^2``: how far W is from orthogonal, with no batch (DDTCDR's constraint). Scalar."""
        w = self.weight
        return (w.t() @ w - torch.eye(w.shape[1], dtype=w.dtype, device=w.device)).pow(2).sum()


class _GramPairing(torch.autograd.Function):
    """``<A, Z^T Z> / B`` with a one-GEMM backward.

    Autograd of ``(A * (Z.t() @ Z)).sum()`` differentiates the GEMM ``Z^T Z`` as a product of two
    independent matrices: two ``d x B x d`` GEMMs for Z's gradient. With both factors the same Z, the
    gradient is ``Z (A + A^T) / B``: one ``B x d x d`` GEMM. ``A``'s gradient is ``Z^T Z / B``, which
    the forward already has.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, z: Tensor) -> Tensor:
        gram = z.t() @ z
        ctx.save_for_backward(a, z, gram)
        return (a * gram).sum() / z.shape[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        a, z, gram = ctx.saved_tensors
        scale = grad / z.shape[0]
        grad_a = gram * scale if ctx.needs_input_grad[0] else None
        # .to: under autocast the forward's A and Z may differ in dtype; the backward runs without it.
        grad_z = (z @ (a + a.t()).to(z.dtype)) * scale if ctx.needs_input_grad[1] else None
        return grad_a, grad_z
