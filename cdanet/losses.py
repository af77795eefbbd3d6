"""CDAnet's objectives (paper Eq. 5-9 and 11) and the baselines', and :func:`compute_loss`, which picks a model's.

Reductions: every BCE is the mean over the batch (``binary_cross_entropy_with_logits``, which is
the numerically stable form of ``BCE(sigmoid(logit), y)``). L^orth is the squared Frobenius norm of
the residual matrix *averaged over the batch* (sum over the d coordinates, mean over rows), so it
is on the same per-sample scale as the BCE terms and alpha/beta do not depend on the batch size.

The objectives are written as the paper's equations over the models' blocks: towers score own,
translated and augmented latents (:class:`~cdanet.layers.Tower`), translators give their L^orth term
(:meth:`~cdanet.layers.Translator.orthogonality_loss`). How the blocks compute them (equation form or
fast path) is the blocks' business (:func:`cdanet.layers.set_fast_paths`), not the losses'.

Loss weights come from ``model.cfg.model``: ``alpha`` (cross, Eq. 9), ``beta`` (orth, Eq. 9/11),
``ddtcdr_orth_weight``, and the Table 5 ablations: ``no_cross`` sets alpha to 0 in stage 1,
``no_orth`` sets beta to 0 in both stages. A term with weight 0 is still reported in ``parts`` but
is computed without autograd, so it contributes no gradient at all (not even zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

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


def translation_loss(vani_s: Tensor, vani_t: Tensor, cross_s: Tensor, cross_t: Tensor, orth: Tensor,
                     alpha: float, beta: float) -> Tensor:
    """Eq. 9: ``L_trans = (L_s^vani + L_t^vani) + alpha (L_s^cross + L_t^cross) + beta L^orth``."""
    return vani_s + vani_t + alpha * (cross_s + cross_t) + beta * orth


def augmentation_loss(aug: Tensor, orth_t: Tensor, beta: float) -> Tensor:
    """Eq. 11 plus the target's Eq. 7 term (Sec. 4.3.2): ``L^aug + beta L_t^orth``, with ``L^aug =
    BCE(sigmoid(R^aug(z_t^aug)), y_t)``."""
    return aug + beta * orth_t


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


def _detached(total: Tensor, parts: Mapping[str, Tensor]) -> LossOutput:
    return LossOutput(total, {k: v.detach() for k, v in parts.items()})


# ---- per-model objectives ---------------------------------------------------------------------------
def translation_objective(net: TranslationNetwork, batches: Mapping[str, Batch]) -> LossOutput:
    """Eq. 5-9 for a :class:`~cdanet.models.TranslationNetwork` on one batch per domain.

    Parts: ``vani_s``, ``vani_t`` (Eq. 8), ``cross_s`` (Eq. 6), ``cross_t`` (Eq. 5), ``orth`` (Eq. 7).
    """
    _need(batches, net)
    alpha, beta = loss_weights(net.cfg.model)
    s, t = net.source, net.target
    z, own_cross = net.latents_and_cross(batches, (s, t))  # own_cross: model.cross_logit / id_cross, on own logits only
    y = {s: batches[s].label, t: batches[t].label}
    vani, cross = {}, {}
    for d in (s, t):
        o = net.other(d)
        tower, translator_o = net.towers[d], net.translators[o]
        if alpha > 0:
            # R_d scores d's own latents, R_d(z_d) (Eq. 8), and o's translated ones, R_d(W_o z_o) (Eq. 5/6).
            own, translated = tower.own_and_translated(z[d], z[o], translator_o)
        else:
            own = tower(z[d])
            with torch.no_grad():
                translated = tower.translated(z[o], translator_o)
        if d in own_cross:
            own = own + own_cross[d]
        vani[d], cross[o] = bce(own, y[d]), bce(translated, y[o])
    with _grad_if(beta):
        orth = net.translators[s].orthogonality_loss(z[s]) + net.translators[t].orthogonality_loss(z[t])
    total = translation_loss(vani[s], vani[t], cross[s], cross[t], orth, alpha, beta)
    return _detached(total, {"vani_s": vani[s], "vani_t": vani[t], "cross_s": cross[s], "cross_t": cross[t],
                             "orth": orth})


def augmentation_objective(net: AugmentationNetwork, batches: Mapping[str, Batch]) -> LossOutput:
    """Eq. 10-11 (+ beta L_t^orth) for an :class:`~cdanet.models.AugmentationNetwork`. Parts: ``aug``, ``orth``."""
    _need(batches, net)
    _, beta = loss_weights(net.cfg.model)
    batch = batches[net.target]
    z, own_cross = net.latent_and_cross(batch)
    logit = net.score(z)  # R^aug(z_t ⊕ W_t z_t), Eq. 10
    aug = bce(logit if own_cross is None else logit + own_cross, batch.label)  # Eq. 11 (+ model.cross_logit / id_cross)
    with _grad_if(beta):
        orth = net.translator.orthogonality_loss(z)
    return _detached(augmentation_loss(aug, orth, beta), {"aug": aug, "orth": orth})


def _domain_bces(model: DomainModel, batches: Mapping[str, Batch]) -> dict[str, Tensor]:
    _need(batches, model)
    logits = model({d: batches[d] for d in model.train_domains})
    return {("bce_s" if d == model.source else "bce_t"): bce(logits[d], batches[d].label)
            for d in model.train_domains}


def supervised_objective(model: DomainModel, batches: Mapping[str, Batch]) -> LossOutput:
    """Sum of each training domain's BCE: the baselines' objective. Parts ``bce_s`` / ``bce_t``."""
    parts = _domain_bces(model, batches)
    return _detached(torch.stack(list(parts.values())).sum(), parts)


def ddtcdr_objective(model: DDTCDR, batches: Mapping[str, Batch]) -> LossOutput:
    """DDTCDR's: ``BCE_s + BCE_t + ddtcdr_orth_weight ||X^T X - I||_F^2``. Parts ``bce_s``, ``bce_t``, ``orth``."""
    parts = _domain_bces(model, batches)
    total = torch.stack(list(parts.values())).sum()
    w = model.cfg.model.ddtcdr_orth_weight
    with _grad_if(w):
        parts["orth"] = model.mapping.orthogonality_penalty()
    if w > 0:
        total = total + w * parts["orth"]
    return _detached(total, parts)


#: ``DomainModel.objective`` -> its objective function.
OBJECTIVES: dict[str, Callable[..., LossOutput]] = {
    "translation": translation_objective,
    "augmentation": augmentation_objective,
    "supervised": supervised_objective,
    "ddtcdr": ddtcdr_objective,
}


def compute_loss(model: nn.Module, batches: Mapping[str, Batch]) -> LossOutput:
    """The training objective of ``model`` on one step's batches (one :class:`Batch` per train domain).

    The model names its objective (``model.objective``, see :class:`~cdanet.models.DomainModel`):
    translation network -> Eq. 9, augmentation network -> Eq. 11 (+ beta L_t^orth), baselines -> sum
    of per-domain BCE (DDTCDR: + its orthogonality term).
    """
    objective = OBJECTIVES.get(getattr(model, "objective", None))  # type: ignore[arg-type]
    if objective is None:
        raise TypeError(f"compute_loss does not know model type {type(model).__name__} (no known .objective)")
    return objective(model, batches)
