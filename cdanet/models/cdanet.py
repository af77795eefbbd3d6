"""CDAnet: the translation network (stage 1, paper Sec. 4.2) and the augmentation network (stage 2, 4.3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from cdanet.batch import Batch
from cdanet.config import ConfigError, ExperimentConfig
from cdanet.contract import USER_FIELD, DomainSchema
from cdanet.layers import MMoE, SharedMLPExtractor, Tower, Translator
from cdanet.models.base import DomainModel, add_cross


def build_extractor(cfg: ExperimentConfig, domains: Sequence[str]) -> MMoE | SharedMLPExtractor:
    """The shared extractor: the MMoE of Eq. 2-4, or one shared MLP for the "w/o MMOE" ablation.

    The ablation keeps depth and width (``expert_layers`` layers R^d -> R^d) so that only the
    mixture-of-experts structure is removed.
    """
    m = cfg.model
    if m.ablation == "no_mmoe":
        return SharedMLPExtractor(domains, m.d, m.expert_layers, m.dropout)
    return MMoE(domains, m.d, m.num_experts, m.expert_layers, m.gate_layers, m.dropout)


class TranslationNetwork(DomainModel):
    """Stage 1 (paper Eq. 1-9): H_s, H_t -> shared MMoE -> z_s, z_t; translators W_s, W_t; towers R_s, R_t.

    ``forward`` gives the vanilla logits ``R_d(z_d)`` of each present domain (Eq. 8), which is also
    what the "w/o augmentation network" ablation evaluates. The losses of Eq. 5-9 are assembled in
    :func:`cdanet.losses.translation_objective` from :meth:`latents`, :attr:`towers` and
    :attr:`translators`; :meth:`translate` and :meth:`tower` serve the Table 4 study of translated
    features.

    Tower depth per domain comes from ``cfg.model.tower_depth(domain)`` (paper: Amazon 2, Taobao 3).
    """

    objective: ClassVar[str] = "translation"

    def __init__(self, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> None:
        super().__init__(cfg, schemas, embedded=cfg.domains)
        m = cfg.model
        self.train_domains = self.eval_domains = cfg.domains
        self.extractor = build_extractor(cfg, cfg.domains)
        self.translators = nn.ModuleDict({dom: Translator(m.d) for dom in cfg.domains})
        self.towers = nn.ModuleDict(
            {dom: Tower(m.d, m.tower_hidden, m.tower_depth(dom), m.dropout) for dom in cfg.domains}
        )

    def latents(self, batches: Mapping[str, Batch], domains: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``z_d`` (Eq. 4) of the present domains, both domains through the extractor in one pass.

        Shapes: ``{domain: Batch of B_d rows} -> {domain: B_d x d}``.
        """
        return self.latents_and_cross(batches, domains)[0]

    def latents_and_cross(self, batches: Mapping[str, Batch], domains: Sequence[str] | None = None
                          ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(z, c)``: ``z`` as :meth:`latents`, and the logit crosses of the domains that have one
        (``model.cross_logit``, a named option; added to the domain's own logits, never to translated ones)."""
        h, cross = self.embed_with_cross(batches, self.present(batches, domains))
        return self.extractor(h), cross

    def latent(self, domain: str, batch: Batch) -> Tensor:
        """``z_d`` of one domain's batch: ``B x d``."""
        return self.latents({domain: batch}, (domain,))[domain]

    def translate(self, domain: str, z: Tensor) -> Tensor:
        """``W_d^tran z_d`` (Eq. 5-6): domain d's latent mapped into the other domain's space, ``B x d``."""
        return self.translators[domain](z)

    def tower(self, domain: str, z: Tensor) -> Tensor:
        """``R_d(z)``: logits ``B`` of domain d's tower for latents ``B x d`` (own or translated)."""
        return self.towers[domain](z)

    def other(self, domain: str) -> str:
        """The other domain of the pair."""
        return self.target if domain == self.source else self.source

    def forward(self, batches: Mapping[str, Batch]) -> dict[str, Tensor]:
        z, cross = self.latents_and_cross(batches)
        return add_cross({dom: self.tower(dom, zd) for dom, zd in z.items()}, cross)


class AugmentationNetwork(DomainModel):
    """Stage 2 (paper Eq. 10-11): ``logit = R^aug(z_t ⊕ W_t z_t)`` on the target domain.

    Holds the target's embedding H_t, the shared extractor (experts and the target's gate), the
    target's translator W_t and a new tower R^aug on the ``2d`` augmented latent. The target is
    ``cfg.target_domain``; either domain of the pair can be the target. The source embedding and
    gate are not kept: stage 2 sees target rows only, so they would never receive a gradient.

    Build it with :meth:`from_translation` (transfer from stage 1) or :meth:`fresh` (Table 5 "w/o
    translation network": the same architecture, randomly initialised); both give the same
    parameter names and shapes, so a saved state dict loads into ``fresh(cfg, schemas)``.
    """

    objective: ClassVar[str] = "augmentation"

    def __init__(self, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> None:
        target = cfg.target_domain
        super().__init__(cfg, schemas, embedded=(target,))
        m = cfg.model
        self.train_domains = self.eval_domains = (target,)
        self.extractor = build_extractor(cfg, (target,))
        self.translator = Translator(m.d)
        self.tower = Tower(2 * m.d, m.tower_hidden, m.tower_depth(target), m.dropout)

    @classmethod
    def fresh(cls, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> AugmentationNetwork:
        """A randomly initialised augmentation network (Table 5 "w/o translation network")."""
        return cls(cfg, schemas)

    @classmethod
    def from_translation(
        cls, net: TranslationNetwork, cfg: ExperimentConfig | None = None
    ) -> AugmentationNetwork:
        """Stage 2 from a trained stage-1 network (paper Sec. 4.3).

        Copies (never shares) H_t, the extractor's experts and the target's gate, and W_t; the tower
        R^aug is new (its input is ``z_t ⊕ W_t z_t``, 2d wide). ``cfg`` defaults to ``net.cfg``;
        a different one may change training settings or swap source and target, not the
        architecture.
        """
        if not isinstance(net, TranslationNetwork):
            raise TypeError(f"from_translation needs a TranslationNetwork, got {type(net).__name__}")
        cfg = net.cfg if cfg is None else cfg
        if set(cfg.domains) != set(net.cfg.domains):
            raise ConfigError(
                f"stage-2 domains {list(cfg.domains)} differ from the translation network's {list(net.cfg.domains)}"
            )
        if (cfg.model.ablation == "no_mmoe") != isinstance(net.extractor, SharedMLPExtractor):
            raise ConfigError(
                f"stage-2 ablation {cfg.model.ablation!r} needs a different extractor than the translation "
                f"network has ({type(net.extractor).__name__})"
            )
        aug = cls(cfg, net.schemas)
        t = cfg.target_domain
        other_gate = tuple(f"gates.{d}." for d in net.cfg.domains if d != t)
        extractor_state = {k: v for k, v in net.extractor.state_dict().items() if not k.startswith(other_gate)}
        try:
            # load_state_dict copies values into aug's own tensors: a deep copy, nothing is shared.
            with torch.no_grad():
                aug.embeddings[t].load_state_dict(net.embeddings[t].state_dict())
                if net.user_link is not None and t == net.target:
                    # h_t's linear embedding sums its field vectors, so the linked source user vectors
                    # fold into the target's user rows: stage 2 keeps the paper's architecture.
                    s = net.source
                    linked = net.embeddings[s].table(USER_FIELD)[net.user_link]
                    aug.embeddings[t].table(USER_FIELD).add_(linked)
                aug.extractor.load_state_dict(extractor_state)
                aug.translator.load_state_dict(net.translators[t].state_dict())
        except RuntimeError as e:
            raise ConfigError(
                f"the stage-2 config does not match the translation network's architecture: {e}"
            ) from e
        aug.train(net.training)
        return aug

    def latent(self, batch: Batch) -> Tensor:
        """``z_t`` (Eq. 4) of a target batch: ``B x d``."""
        return self.latent_and_cross(batch)[0]

    def latent_and_cross(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """``(z_t, c)``: ``z_t`` as :meth:`latent`, and the target's logit cross (``model.cross_logit``), or None."""
        t = self.target
        h, cross = self.embeddings[t].forward_with_cross(batch.features)
        return self.extractor({t: h})[t], cross

    def augment(self, z: Tensor) -> Tensor:
        """``z_t^aug = z_t ⊕ W_t z_t`` (Eq. 10): ``B x d -> B x 2d``."""
        return torch.cat([z, self.translator(z)], dim=1)

    def score(self, z: Tensor) -> Tensor:
        """``R^aug(z_t ⊕ W_t z_t)`` (Eq. 10-11): ``B x d -> B`` logits.

        :meth:`Tower.augmented <cdanet.layers.Tower.augmented>` computes it without materialising
        the augmented latent :meth:`augment` (its fast path folds ``[I ; W]`` into the first layer).
        """
        return self.tower.augmented(z, self.translator)

    def forward(self, batches: Mapping[str, Batch]) -> dict[str, Tensor]:
        (t,) = self.present(batches)
        z, cross = self.latent_and_cross(batches[t])
        logit = self.score(z)
        return {t: logit if cross is None else logit + cross}
