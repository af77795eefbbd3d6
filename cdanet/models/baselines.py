"""The Table 2 baselines, all on per-domain embeddings (heterogeneous inputs, paper Sec. 5.1.2).

Each is a thin composition of :mod:`cdanet.layers`: H_d -> shared or per-domain body -> tower R_d.
Depths follow CDAnet's so the comparison is like for like: ``expert_layers`` layers of width d in the
body, ``tower_depth(domain)`` layers in the tower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from cdanet import layers
from cdanet.batch import Batch
from cdanet.config import ExperimentConfig
from cdanet.contract import DomainSchema
from cdanet.models.base import DomainModel, add_cross


class _TwoDomainTowers(DomainModel):
    """H_d -> ``self.body`` (a shared extractor over ``{domain: h}``) -> R_d, trained on both domains."""

    body: nn.Module

    def __init__(self, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> None:
        super().__init__(cfg, schemas, embedded=cfg.domains)
        m = cfg.model
        self.train_domains = self.eval_domains = cfg.domains
        self.towers = nn.ModuleDict(
            {dom: layers.Tower(m.d, m.tower_hidden, m.tower_depth(dom), m.dropout) for dom in cfg.domains}
        )

    def forward(self, batches: Mapping[str, Batch]) -> dict[str, Tensor]:
        h, cross = self.embed_with_cross(batches, self.present(batches))
        z = self.body(h)
        return add_cross({dom: self.towers[dom](zd) for dom, zd in z.items()}, cross)


class MLP(DomainModel):
    """Single-domain MLP (the paper's MLP row): H_t -> MLP -> R_t, trained on the target domain only."""

    two_domain = False

    def __init__(self, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> None:
        t = cfg.target_domain
        super().__init__(cfg, schemas, embedded=(t,))
        m = cfg.model
        self.train_domains = self.eval_domains = (t,)
        self.body = layers.MLP(m.d, [m.d] * m.expert_layers, m.dropout)
        self.tower = layers.Tower(m.d, m.tower_hidden, m.tower_depth(t), m.dropout)

    def forward(self, batches: Mapping[str, Batch]) -> dict[str, Tensor]:
        (t,) = self.present(batches)
        h, cross = self.embed_with_cross(batches, (t,))
        return add_cross({t: self.tower(self.body(h[t]))}, cross)


class ShareMiddle(_TwoDomainTowers):
    """ShareMiddle: per-domain embeddings, one MLP shared by both domains right after them (as in
    Share-Bottom), per-domain towers."""

    def __init__(self, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> None:
        super().__init__(cfg, schemas)
        m = cfg.model
        self.body = layers.SharedMLPExtractor(cfg.domains, m.d, m.expert_layers, m.dropout)


class MMoE(_TwoDomainTowers):
    """The paper's MMOE baseline (Ma et al. 2018): per-domain embeddings, K shared experts, one gate
    and one tower per domain. It is CDAnet's stage-1 network without translators and cross losses."""

    def __init__(self, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> None:
        super().__init__(cfg, schemas)
        m = cfg.model
        self.body = layers.MMoE(cfg.domains, m.d, m.num_experts, m.expert_layers, m.gate_layers, m.dropout)


class PLE(_TwoDomainTowers):
    """PLE (Tang et al. 2020): ``ple_levels`` CGC levels of domain-specific and shared experts with
    progressive routing, then per-domain towers. Gates use ``gate_layers`` like CDAnet's."""

    def __init__(self, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> None:
        super().__init__(cfg, schemas)
        m = cfg.model
        self.body = layers.PLE(
            cfg.domains, m.d, m.ple_levels, m.ple_shared_experts, m.ple_specific_experts, m.expert_layers,
            m.gate_layers, m.dropout,
        )


class STAR(DomainModel):
    """STAR (Sheng et al. 2021) on heterogeneous inputs.

    ``H_d`` projects each domain's own fields to d (STAR assumes one shared embedding layer, which
    heterogeneous domains do not have), then partitioned normalisation, a star-topology FCN of
    ``expert_layers`` layers of width d followed by the tower layers, and the auxiliary network's
    logit on [domain indicator ⊕ h_d] added to it. The star FCN has one shape for all domains, so its
    tower part uses the target's ``tower_depth``.
    """

    def __init__(self, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> None:
        super().__init__(cfg, schemas, embedded=cfg.domains)
        m = cfg.model
        self.train_domains = self.eval_domains = cfg.domains
        depth = m.tower_depth(cfg.target_domain)
        dims = [m.d] * (m.expert_layers + 1) + [m.tower_hidden] * (depth - 1) + [1]
        self.norm = layers.PartitionedNorm(cfg.domains, m.d)
        self.fcn = layers.StarFCN(cfg.domains, dims, m.dropout)
        self.aux = layers.AuxiliaryNetwork(cfg.domains, m.d, m.tower_hidden)

    def forward(self, batches: Mapping[str, Batch]) -> dict[str, Tensor]:
        out = {}
        hs, cross = self.embed_with_cross(batches, self.present(batches))
        for dom, h in hs.items():
            out[dom] = self.fcn(self.norm(h, dom), dom).squeeze(-1) + self.aux(h, dom)
        return add_cross(out, cross)


class DDTCDR(DomainModel):
    """DDTCDR (Li & Tuzhilin 2020), adapted to CTR with heterogeneous feature-field inputs.

    DDTCDR encodes users per domain, links the two latent spaces by one orthogonal mapping X (X from
    A to B, X^T back, since X^T = X^{-1} for orthogonal X), predicts each domain from its own user
    representation combined with the representation transferred from the other domain, trains both
    domains' objectives (dual learning) and regularises ``||X^T X - I||^2``.

    Its transferred representation is the other domain's encoding of the same user, which needs
    the user's features in both domains. Heterogeneous domains have no such pairing, so here a row's
    own embedding is carried into the other domain's input space, encoded there by that domain's
    encoder, and the result is the transferred representation:

        e_s = E_s(h_s),  c_s = E_t(X h_s),    logit_s = R_s(e_s ⊕ c_s)
        e_t = E_t(h_t),  c_t = E_s(X^T h_t),  logit_t = R_t(e_t ⊕ c_t)

    with ``E_d`` an ``expert_layers``-layer MLP R^d -> R^d (domain d's encoder, trained on d's rows)
    and ``X`` in R^{d x d} initialised orthogonal. Both domains' losses train X and both encoders,
    in one joint step rather than DDTCDR's alternating updates; the objective is
    ``BCE_s + BCE_t + ddtcdr_orth_weight * ||X^T X - I||_F^2`` (see :mod:`cdanet.losses`).
    """

    objective: ClassVar[str] = "ddtcdr"

    def __init__(self, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> None:
        super().__init__(cfg, schemas, embedded=cfg.domains)
        m = cfg.model
        self.train_domains = self.eval_domains = cfg.domains
        self.encoders = nn.ModuleDict({dom: layers.MLP(m.d, [m.d] * m.expert_layers, m.dropout) for dom in cfg.domains})
        self.mapping = layers.Translator(m.d)  # X: source input space -> target input space
        self.towers = nn.ModuleDict(
            {dom: layers.Tower(2 * m.d, m.tower_hidden, m.tower_depth(dom), m.dropout) for dom in cfg.domains}
        )

    def transfer(self, domain: str, h: Tensor) -> Tensor:
        """``c_d``: h of domain d mapped into the other domain (X or X^T) and encoded there: ``B x d``."""
        if domain == self.source:
            return self.encoders[self.target](self.mapping(h))
        return self.encoders[self.source](self.mapping.transpose(h))

    def forward(self, batches: Mapping[str, Batch]) -> dict[str, Tensor]:
        out = {}
        hs, cross = self.embed_with_cross(batches, self.present(batches))
        for dom, h in hs.items():
            rep = torch.cat([self.encoders[dom](h), self.transfer(dom, h)], dim=1)
            out[dom] = self.towers[dom](rep)
        return add_cross(out, cross)
