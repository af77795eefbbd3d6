"""Plumbing shared by every model: config/schema checks, per-domain embeddings, batch routing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from cdanet.batch import Batch
from cdanet.config import ConfigError, ExperimentConfig
from cdanet.contract import USER_FIELD, DomainSchema, FieldSpec, SchemaError
from cdanet.layers import DomainEmbedding


def check_inputs(cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> None:
    """Validate ``cfg`` (raises :class:`ConfigError`) and that ``schemas`` holds both of its domains.

    Raises :class:`SchemaError` when a schema is missing or is filed under another domain's name.
    """
    if not isinstance(cfg, ExperimentConfig):
        raise ConfigError(f"expected an ExperimentConfig, got {type(cfg).__name__}")
    cfg.validate()
    missing = [d for d in cfg.domains if d not in schemas]
    if missing:
        raise SchemaError(
            f"no feature schema for domain(s) {missing} (have {sorted(schemas)}); the model needs the "
            f"schemas of the source domain {cfg.source_domain!r} and the target domain "
            f"{cfg.target_domain!r} (DomainSchema.load(<processed_root>/<domain>))"
        )
    for key, schema in schemas.items():
        if schema.domain != key:
            raise SchemaError(f"schemas[{key!r}] describes domain {schema.domain!r}, not {key!r}")


class DomainModel(nn.Module):
    """Base of all models: holds ``cfg``, ``schemas``, one :class:`DomainEmbedding` per used domain.

    Subclasses set ``train_domains`` / ``eval_domains`` and implement ``forward(batches)`` returning
    ``{domain: B logits}`` for every domain in ``eval_domains`` that is present in ``batches``.
    ``objective`` names the model's training objective in :data:`cdanet.losses.OBJECTIVES` (default
    ``supervised``: the sum of each training domain's BCE).
    """

    train_domains: tuple[str, ...]
    eval_domains: tuple[str, ...]
    objective: ClassVar[str] = "supervised"
    #: Whether the model learns from the other domain at all; single-domain models set False, and then
    #: the cross-domain inputs (``model.source_history_fields``) are not built.
    two_domain: ClassVar[bool] = True

    def __init__(
        self, cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema], embedded: Sequence[str]
    ) -> None:
        super().__init__()
        check_inputs(cfg, schemas)
        self.cfg = cfg
        self.schemas: dict[str, DomainSchema] = {d: schemas[d] for d in cfg.domains}
        self.source, self.target = cfg.source_domain, cfg.target_domain
        m = cfg.model
        self.embeddings = nn.ModuleDict(
            {dom: DomainEmbedding(schemas[dom], m.d, m.embedding_dim, m.embedding_combiner,
                                  history_field=m.history_fields.get(dom), history_len=m.history_len,
                                  history_init_std=m.history_init_std,
                                  source_history=self._source_history(dom),
                                  user_fields=m.user_fields.get(dom, ()),
                                  cross_logit=self._cross_logit(dom), id_cross=m.id_cross)
             for dom in embedded}
        )
        # model.shared_users: user_link[i] = the source's user index of the target's user i (0: none).
        self.user_link: Tensor | None
        self.register_buffer("user_link", None)
        if m.shared_users and self.source in embedded and self.target in embedded:
            for dom in (self.source, self.target):
                if USER_FIELD not in self.schemas[dom].field_names:
                    raise SchemaError(f"model.shared_users needs a {USER_FIELD!r} field in domain {dom!r}")
            size = self.schemas[self.target].field(USER_FIELD).vocab_size
            self.register_buffer("user_link", torch.zeros(size, dtype=torch.long))

    def _source_history(self, domain: str) -> FieldSpec | None:
        """model.source_history_fields: the other domain's field whose per-user profile ``domain`` reads."""
        name = self.cfg.model.source_history_fields.get(domain)
        if name is None or not self.two_domain:
            return None
        other = self.source if domain == self.target else self.target
        if name not in self.schemas[other].field_names:
            raise SchemaError(f"model.source_history_fields[{domain!r}] = {name!r}, but domain {other!r} has no "
                              f"such field (fields: {list(self.schemas[other].field_names)})")
        return self.schemas[other].field(name)

    def _cross_logit(self, domain: str) -> str:
        """model.cross_logit where ``domain`` has the profile it crosses ("none" elsewhere)."""
        m = self.cfg.model
        if m.cross_logit == "attributes" and not m.user_fields.get(domain):
            return "none"
        if m.cross_logit == "profile" and domain not in m.history_fields:
            return "none"
        return m.cross_logit

    def link_users(self, link: Tensor) -> None:
        """Set :attr:`user_link` (int64 ``[target user vocab]``, values in the source's user vocab)."""
        if self.user_link is None:
            raise ValueError(f"{type(self).__name__} was built without model.shared_users")
        if link.shape != self.user_link.shape:
            raise ValueError(f"user link of shape {list(link.shape)}, expected {list(self.user_link.shape)}")
        bound = self.schemas[self.source].field(USER_FIELD).vocab_size
        if bool(((link < 0) | (link >= bound)).any()):
            raise ValueError(f"user link values must lie in [0, {bound}) (the source's user vocabulary)")
        self.user_link.copy_(link)

    def present(self, batches: Mapping[str, Batch], domains: Iterable[str] | None = None) -> list[str]:
        """The domains of ``domains`` (default: ``eval_domains``) present in ``batches``; raises if none."""
        wanted = tuple(self.eval_domains if domains is None else domains)
        doms = [d for d in wanted if d in batches]
        if not doms:
            raise KeyError(
                f"{type(self).__name__} scores domain(s) {list(wanted)} but the batches hold {sorted(batches)}"
            )
        return doms

    def embed(self, batches: Mapping[str, Batch], domains: Iterable[str]) -> dict[str, Tensor]:
        """``h_d = H_d(x_d)`` (Eq. 1) for each of ``domains``: ``{domain: B_d x d}``.

        With ``model.shared_users`` the target's ``h`` adds the source's user vector of the same user
        (the source's OOV user vector for users the source has never seen).
        """
        return self.embed_with_cross(batches, domains)[0]

    def embed_with_cross(self, batches: Mapping[str, Batch], domains: Iterable[str]
                         ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(h, c)``: ``h`` as :meth:`embed`, and ``{domain: B}`` the logit crosses of the domains that
        have one (``model.cross_logit``; add them to the logits with :func:`add_cross`)."""
        h: dict[str, Tensor] = {}
        cross: dict[str, Tensor] = {}
        for d in domains:
            linked = None
            if self.user_link is not None and d == self.target:
                users = self.user_link[batches[d].features[USER_FIELD]]
                linked = self.embeddings[self.source].rows(USER_FIELD, users)
            h[d], c = self.embeddings[d].forward_with_cross(batches[d].features, linked)
            if c is not None:
                cross[d] = c
        return h, cross


def add_cross(logits: Mapping[str, Tensor], cross: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``logits[d] + cross[d]`` where domain d has a logit cross (``model.cross_logit``), else ``logits[d]``."""
    return {d: (x + cross[d] if d in cross else x) for d, x in logits.items()}
