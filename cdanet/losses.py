"""CDAnet's objectives (paper Eq. 5-9 and 11), the baselines' objectives and :func:`compute_loss`.

Reductions: every BCE is the mean over the batch (``binary_cross_entropy_with_logits``, which is
the numerically stable form of ``BCE(sigmoid(logit), y)``). L^orth is the squared Frobenius norm of
the residual matrix *averaged over the batch* (sum over the d coordinates, mean over rows), so it
is on the same per-sample scale as the BCE terms and alpha/beta do not depend on the batch size.

Loss weights come from ``model.cfg.model``: ``alpha`` (cross, Eq. 9), ``beta`` (orth, Eq. 9/11),
``ddtcdr_orth_weight``, and the Table 5 ablations: ``no_cross`` sets alpha to 0 in stage 1,
``no_orth`` sets beta to 0 in both stages. A term with weight 0 is still reported in ``parts`` but
is computed without autograd, so it contributes no gradient at all (not even zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdanet.batch import Batch
from cdanet.config import ModelConfig
from cdanet.models import DDTCDR, AugmentationNetwork, DomainModel, TranslationNetwork


class LossOutput(NamedTuple):
    """``total``: the scalar to backpropagate; ``parts``: detached scalars for logging."""

    total: Tensor
    parts: dict[str, Tensor]


# ---- pure equation functions -------------------------------------------------------------------------
def bce(logits: Tensor, labels: Tensor) -> Tensor:
    """``BCE(sigmoid(logits), labels)``, mean over the batch (Eq. 5, 6, 8, 11). ``B, B -> scalar``."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def cross_loss(tower: Callable[[Tensor], Tensor], translator: Callable[[Tensor], Tensor], z: Tensor,
               labels: Tensor) -> Tensor:
    """Cross supervision (Eq. 5 for the target, Eq. 6 for the source).

    ``L_t^cross = BCE(sigmoid(R_s(W_t z_t)), y_t)``: domain t's latent, translated by t's translator,
    scored by the *other* domain's tower, supervised by t's own labels. Pass ``tower=R_s``,
    ``translator=W_t``, ``z=z_t``, ``labels=y_t`` (and symmetrically for Eq. 6).
    """
    return bce(tower(translator(z)), labels)


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


def orth_loss(weight: Tensor, z: Tensor) -> Tensor:
    """One domain's term of Eq. 7: ``||W^T (W z) - z||^2``, summed over d, mean over the batch.

    ``weight``: W (``d x d``); ``z``: ``B x d``. L^orth of Eq. 7 is the sum of this over both domains.

    Computed in Gram form: with ``M = W^T W`` and ``A = (M - I)^T (M - I)`` (d x d),
    ``||(M - I) z_i||^2 = z_i^T A z_i``, so the batch mean is ``<A, Z^T Z> / B``. Same value and
    gradients as the row-wise form, with one ``B x d x d`` GEMM forward and one backward (see
    :class:`_GramPairing`) instead of two and four, and no ``B x d`` temporaries
    (``tests/test_losses.py`` checks both against the row-wise form).
    """
    eye = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
    residual = weight.t() @ weight - eye  # M - I, d x d
    return _GramPairing.apply(residual.t() @ residual, z)


def translation_loss(vani_s: Tensor, vani_t: Tensor, cross_s: Tensor, cross_t: Tensor, orth: Tensor,
                     alpha: float, beta: float) -> Tensor:
    """Eq. 9: ``L_trans = (L_s^vani + L_t^vani) + alpha (L_s^cross + L_t^cross) + beta L^orth``."""
    return vani_s + vani_t + alpha * (cross_s + cross_t) + beta * orth


def augmentation_loss(logits: Tensor, labels: Tensor, orth_t: Tensor, beta: float) -> Tensor:
    """Eq. 11 plus the target's Eq. 7 term (Sec. 4.3.2): ``BCE(sigmoid(R^aug(z_t^aug)), y_t) + beta L_t^orth``."""
    return bce(logits, labels) + beta * orth_t


def mapping_orthogonality(weight: Tensor) -> Tensor:
    """DDTCDR's constraint on its mapping X: ``||X^T X - I||_F^2`` (a property of X alone, no batch)."""
    eye = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
    return (weight.t() @ weight - eye).pow(2).sum()


def loss_weights(m: ModelConfig) -> tuple[float, float]:
    """``(alpha, beta)`` after the Table 5 ablations (``no_cross``: alpha=0, ``no_orth``: beta=0)."""
    alpha = 0.0 if m.ablation == "no_cross" else m.alpha
    beta = 0.0 if m.ablation == "no_orth" else m.beta
    return alpha, beta


def _grad_if(weight: float) -> AbstractContextManager[None]:
    # A term with weight 0 is evaluated for logging only: no graph, so no gradient reaches its inputs.
    return nullcontext() if weight > 0 else torch.no_grad()


def _need(batches: Mapping[str, Batch], model: DomainModel) -> None:
    missing = [d for d in model.train_domains if d not in batches]
    if missing:
        raise KeyError(
            f"{type(model).__name__} trains on {list(model.train_domains)}; batches lack {missing} "
            f"(have {sorted(batches)})"
        )


# ---- per-model objectives ---------------------------------------------------------------------------
def translation_objective(net: TranslationNetwork, batches: Mapping[str, Batch]) -> LossOutput:
    """Eq. 5-9 for a :class:`~cdanet.models.TranslationNetwork` on one batch per domain.

    Parts: ``vani_s``, ``vani_t`` (Eq. 8), ``cross_s`` (Eq. 6), ``cross_t`` (Eq. 5), ``orth`` (Eq. 7).
    Each tower scores its own rows and the other domain's translated rows in one call.
    """
    _need(batches, net)
    alpha, beta = loss_weights(net.cfg.model)
    s, t = net.source, net.target
    z = net.latents(batches, (s, t))
    y = {s: batches[s].label, t: batches[t].label}
    vani, cross = {}, {}
    for d in (s, t):
        o = net.other(d)
        tower = net.towers[d]
        # R_d's first layer on W_o z_o, with W_o folded into the layer's weight (Tower.first): the
        # translated latents feed only L^cross, so they are never materialised.
        with _grad_if(alpha):
            cross_rows = tower.first(z[o], input_map=net.translators[o].weight)
        if alpha > 0:
            # R_d on [z_d ; W_o z_o] after the first layer: d's vanilla rows (Eq. 8) and o's cross
            # rows (Eq. 5/6) in one pass.
            logits = tower.rest(torch.cat([tower.first(z[d]), cross_rows]))
            vani[d], cross[o] = bce(logits[: len(y[d])], y[d]), bce(logits[len(y[d]):], y[o])
        else:
            vani[d] = bce(tower(z[d]), y[d])
            with torch.no_grad():
                cross[o] = bce(tower.rest(cross_rows), y[o])
    with _grad_if(beta):
        orth = orth_loss(net.translators[s].weight, z[s]) + orth_loss(net.translators[t].weight, z[t])
    total = translation_loss(vani[s], vani[t], cross[s], cross[t], orth, alpha, beta)
    parts = {"vani_s": vani[s], "vani_t": vani[t], "cross_s": cross[s], "cross_t": cross[t], "orth": orth}
    return LossOutput(total, {k: v.detach() for k, v in parts.items()})


def augmentation_objective(net: AugmentationNetwork, batches: Mapping[str, Batch]) -> LossOutput:
    """Eq. 10-11 (+ beta L_t^orth) for an :class:`~cdanet.models.AugmentationNetwork`. Parts: ``aug``, ``orth``."""
    _need(batches, net)
    _, beta = loss_weights(net.cfg.model)
    batch = batches[net.target]
    z = net.latent(batch)
    aug = bce(net.score(z), batch.label)
    with _grad_if(beta):
        orth = orth_loss(net.translator.weight, z)
    total = aug + beta * orth
    return LossOutput(total, {"aug": aug.detach(), "orth": orth.detach()})


def supervised_objective(model: DomainModel, batches: Mapping[str, Batch]) -> LossOutput:
    """Sum of each training domain's BCE: the baselines' objective. Parts ``bce_s`` / ``bce_t``."""
    _need(batches, model)
    logits = model({d: batches[d] for d in model.train_domains})
    parts = {("bce_s" if d == model.source else "bce_t"): bce(logits[d], batches[d].label)
             for d in model.train_domains}
    total = torch.stack(list(parts.values())).sum()
    if isinstance(model, DDTCDR):
        w = model.cfg.model.ddtcdr_orth_weight
        with _grad_if(w):
            parts["orth"] = mapping_orthogonality(model.mapping.weight)
        if w > 0:
            total = total + w * parts["orth"]
    return LossOutput(total, {k: v.detach() for k, v in parts.items()})


def compute_loss(model: nn.Module, batches: Mapping[str, Batch]) -> LossOutput:
    """The training objective of ``model`` on one step's batches (one :class:`Batch` per train domain).

    Dispatches on the model type: translation network -> Eq. 9, augmentation network -> Eq. 11
    (+ beta L_t^orth), baselines -> sum of per-domain BCE (+ DDTCDR's orthogonality term).
    """
    if isinstance(model, TranslationNetwork):
        return translation_objective(model, batches)
    if isinstance(model, AugmentationNetwork):
        return augmentation_objective(model, batches)
    if isinstance(model, DomainModel):
        return supervised_objective(model, batches)
    raise TypeError(f"compute_loss does not know model type {type(model).__name__}")
