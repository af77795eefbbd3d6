"""Plumbing shared by every model: config/schema checks, per-domain embeddings, batch routing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor, nn

from cdanet.batch import Batch
from cdanet.config import ConfigError, ExperimentConfig
from cdanet.features import DomainSchema, SchemaError
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
    """

    train_domains: tuple[str, ...]
    eval_domains: tuple[str, ...]

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
            {dom: DomainEmbedding(schemas[dom], m.d, m.embedding_dim, m.embedding_combiner) for dom in embedded}
        )

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
        """``h_d = H_d(x_d)`` (Eq. 1) for each of ``domains``: ``{domain: B_d x d}``."""
        return {d: self.embeddings[d](batches[d].features) for d in domains}
