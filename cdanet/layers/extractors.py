"""Shared feature extractors between the embedding layer and the towers.

Every extractor maps per-domain inputs to per-domain outputs, ``{domain: B_d x d} -> {domain: B_d x d}``,
so that one call can fuse the shared computation of both domains' rows (one GEMM on ``B_s + B_t``
rows is faster than two on ``B_s`` and ``B_t``). Domains missing from the input are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from cdanet.layers.blocks import MLP, ExpertBank, mix_experts


def _split_rows(x: Tensor, domains: Sequence[str], sizes: Sequence[int]) -> dict[str, Tensor]:
    return dict(zip(domains, torch.split(x, list(sizes)), strict=True))


def _check_domains(inputs: Mapping[str, Tensor], known: Sequence[str], what: str) -> list[str]:
    unknown = sorted(set(inputs) - set(known))
    if unknown:
        raise KeyError(f"{what} has no gate/branch for domain(s) {unknown}; it was built for {list(known)}")
    return [d for d in known if d in inputs]


class Gate(nn.Module):
    """Softmax gate over ``K`` experts: ``g = softmax(W^gate G(x))`` (paper Eq. 3).

    ``G`` is an MLP of ``layers`` ``Linear(d, d) -> ReLU`` layers (0 gives the classic linear gate of
    MMoE/PLE) and ``W^gate`` an affine map to K logits.

    Shapes: ``B x in_dim -> B x K`` (rows sum to 1).
    """

    def __init__(self, in_dim: int, num_experts: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = MLP(in_dim, [in_dim] * layers, dropout)
        self.proj = nn.Linear(in_dim, num_experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.proj(self.body(x)), dim=-1)


class MMoE(nn.Module):
    """Shared multi-gate mixture of experts with one gate per domain (paper Eq. 2-4, Ma et al. 2018).

    ``K`` experts (each an ``expert_layers``-layer MLP R^d -> R^d, shared by all domains) and one
    :class:`Gate` per domain: ``z_d = sum_i g_d^i F_i(h_d)``. The experts run once on the rows of all
    domains stacked together.

    Shapes: ``{domain: B_d x d} -> {domain: B_d x d}``.
    """

    def __init__(
        self,
        domains: Sequence[str],
        d: int,
        num_experts: int,
        expert_layers: int,
        gate_layers: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"MMoE needs K (num_experts) >= 1, got {num_experts}")
        self.domains, self.d, self.num_experts = tuple(domains), d, num_experts
        self.experts = ExpertBank(num_experts, d, d, expert_layers, dropout)
        self.gates = nn.ModuleDict({dom: Gate(d, num_experts, gate_layers, dropout) for dom in self.domains})

    def gate_weights(self, h: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The gate outputs ``g_d``: ``{domain: B_d x K}`` (for inspecting expert usage)."""
        return {dom: self.gates[dom](h[dom]) for dom in _check_domains(h, self.domains, "MMoE")}

    def forward(self, h: Mapping[str, Tensor]) -> dict[str, Tensor]:
        doms = _check_domains(h, self.domains, "MMoE")
        rows = [h[dom] for dom in doms]
        experts = self.experts(torch.cat(rows) if len(rows) > 1 else rows[0])  # K x sum(B_d) x d
        per_domain = torch.split(experts, [r.shape[0] for r in rows], dim=1)
        return {
            dom: mix_experts(f, self.gates[dom](h[dom])) for dom, f in zip(doms, per_domain, strict=True)
        }


class SharedMLPExtractor(nn.Module):
    """One MLP R^d -> R^d shared by all domains (Table 5 "w/o MMOE"; ShareMiddle's middle layers).

    Shapes: ``{domain: B_d x d} -> {domain: B_d x d}``.
    """

    def __init__(self, domains: Sequence[str], d: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.domains, self.d = tuple(domains), d
        self.mlp = MLP(d, [d] * layers, dropout)

    def forward(self, h: Mapping[str, Tensor]) -> dict[str, Tensor]:
        doms = _check_domains(h, self.domains, "SharedMLPExtractor")
        rows = [h[dom] for dom in doms]
        out = self.mlp(torch.cat(rows) if len(rows) > 1 else rows[0])
        return _split_rows(out, doms, [r.shape[0] for r in rows])


class CGC(nn.Module):
    """One customized gate control level of PLE (Tang et al. 2020).

    Per domain ``n_specific`` specific experts, plus ``n_shared`` shared experts. The gate of domain d
    mixes [its specific experts + the shared experts] on the domain path; unless this is the last
    level, a shared gate (parameters shared by the domains) mixes the same experts on the shared path
    and feeds the shared experts of the next level (progressive extraction).

    Adaptation to cross-domain rows: in multi-task PLE every row passes through every task's experts,
    so the shared gate mixes all experts. Here a row belongs to exactly one domain, and the other
    domain's specific experts are fitted to another input distribution, so for a row of domain d the
    shared gate mixes the experts that row actually visits: d's specific ones and the shared ones.

    Shapes: ``x: {domain: B_d x in_dim}``, ``shared: {domain: B_d x in_dim}`` ->
    ``({domain: B_d x out_dim}, {domain: B_d x out_dim} or None on the last level)``.
    """

    def __init__(
        self,
        domains: Sequence[str],
        in_dim: int,
        out_dim: int,
        n_shared: int,
        n_specific: int,
        expert_layers: int,
        gate_layers: int,
        last: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_shared < 1 or n_specific < 1:
            raise ValueError(f"CGC needs >= 1 shared and specific experts, got {n_shared}, {n_specific}")
        self.domains, self.last = tuple(domains), last
        n_mix = n_shared + n_specific
        self.shared_experts = ExpertBank(n_shared, in_dim, out_dim, expert_layers, dropout)
        self.specific_experts = nn.ModuleDict(
            {dom: ExpertBank(n_specific, in_dim, out_dim, expert_layers, dropout) for dom in self.domains}
        )
        self.gates = nn.ModuleDict({dom: Gate(in_dim, n_mix, gate_layers, dropout) for dom in self.domains})
        self.shared_gate = None if last else Gate(in_dim, n_mix, gate_layers, dropout)

    def forward(
        self, x: Mapping[str, Tensor], shared: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        doms = _check_domains(x, self.domains, "CGC")
        rows = [shared[dom] for dom in doms]
        shared_out = self.shared_experts(torch.cat(rows) if len(rows) > 1 else rows[0])
        shared_split = torch.split(shared_out, [r.shape[0] for r in rows], dim=1)
        out: dict[str, Tensor] = {}
        out_shared: dict[str, Tensor] = {}
        for dom, sh in zip(doms, shared_split, strict=True):
            experts = torch.cat([self.specific_experts[dom](x[dom]), sh], dim=0)  # (n_spec+n_sh) x B x D
            out[dom] = mix_experts(experts, self.gates[dom](x[dom]))
            if self.shared_gate is not None:
                out_shared[dom] = mix_experts(experts, self.shared_gate(shared[dom]))
        return out, (None if self.last else out_shared)


class PLE(nn.Module):
    """Progressive layered extraction: ``levels`` stacked :class:`CGC` levels (Tang et al. 2020).

    Level 1 reads ``h_d`` on both the domain and the shared path; the last level has no shared gate.

    Shapes: ``{domain: B_d x d} -> {domain: B_d x d}``.
    """

    def __init__(
        self,
        domains: Sequence[str],
        d: int,
        levels: int,
        n_shared: int,
        n_specific: int,
        expert_layers: int,
        gate_layers: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"PLE needs >= 2 levels for progressive extraction, got {levels}")
        self.domains, self.d = tuple(domains), d
        self.levels = nn.ModuleList(
            CGC(domains, d, d, n_shared, n_specific, expert_layers, gate_layers, last=i == levels - 1,
                dropout=dropout)
            for i in range(levels)
        )

    def forward(self, h: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x: dict[str, Tensor] = dict(h)
        shared: dict[str, Tensor] | None = dict(h)
        for level in self.levels:
            assert shared is not None  # only the last level returns None
            x, shared = level(x, shared)
        return x
