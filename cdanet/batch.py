"""The unit of model input: one domain's mini-batch as tensors keyed by schema field."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cdanet.contract import DomainSchema, FieldKind


@dataclass
class Batch:
    """A mini-batch of one domain.

    ``features[name]`` per :class:`~cdanet.contract.FieldSpec`:
    categorical / categorical_id -> int64 ``[B]``; multi_hot -> int64 ``[B, max_len]`` padded with 0;
    dense_vector -> float32 ``[B, dim]``. ``label`` is float32 ``[B]`` with values in {0, 1}.
    """

    features: dict[str, torch.Tensor]
    label: torch.Tensor

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.features.items()},
            self.label.to(device, non_blocking=non_blocking),
        )


def random_batch(schema: DomainSchema, n: int, generator: torch.Generator | None = None) -> Batch:
    """A batch of ``n`` uniformly random, schema-conformant rows (for tests and benchmarks)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    feats: dict[str, torch.Tensor] = {}
    for f in schema.fields:
        if f.kind is FieldKind.DENSE_VECTOR:
            feats[f.name] = torch.randn(n, f.dim, generator=g)
        elif f.kind is FieldKind.MULTI_HOT:
            feats[f.name] = torch.randint(0, f.vocab_size, (n, f.max_len), generator=g)
        else:
            feats[f.name] = torch.randint(0, f.vocab_size, (n,), generator=g)
    label = torch.randint(0, 2, (n,), generator=g).float()
    return Batch(feats, label)
