"""The decoupled, domain-specific embedding layer H_d (paper Sec. 4.2.1, Eq. 1)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdanet.contract import ITEM_FIELD, USER_FIELD, DomainSchema, FieldKind, FieldSpec
from cdanet.native import coalesce_grad, index_add_slots_

COMBINERS: tuple[str, ...] = ("linear", "concat", "sum")


class _Lookup(torch.autograd.Function):
    """Rows of a table: ``weight[idx]`` (``B x S -> B x S x e``), or their weighted sum over the S slots.

    Same values as ``F.embedding`` / ``F.embedding_bag(mode="sum", per_sample_weights=...)``, with a
    cheaper backward on CPU. Dense (``sparse=False``): the ``B`` (weighted) gradient rows of each slot
    added into a zeroed table, slot by slot in index order (:func:`cdanet.native.index_add_slots_`: one C
    pass on CPU, bitwise the sums of one ``index_add_`` per slot), deterministic on CPU; the profile
    tables of :class:`UserHistory` (few rows, 10-20 slots) take this path.
    Sparse: a coalesced sparse ``R x e`` gradient holding only the looked-up rows
    (:func:`cdanet.native.coalesce_grad`), for the optimiser of :mod:`cdanet.training.optim`.
    """

    @staticmethod
    def forward(ctx: Any, weight: Tensor, idx: Tensor, slot_weights: Tensor | None, pool: bool,
                sparse: bool = False) -> Tensor:
        ctx.save_for_backward(idx, slot_weights)
        ctx.pool, ctx.rows, ctx.sparse = pool, weight.shape[0], sparse
        if pool:
            return F.embedding_bag(idx, weight, mode="sum", per_sample_weights=slot_weights)
        return F.embedding(idx, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        idx, slot_weights = ctx.saved_tensors
        if ctx.sparse:
            rows, values = coalesce_grad(idx, grad, slot_weights, ctx.pool, ctx.rows)
            out = torch.sparse_coo_tensor(rows.unsqueeze(0), values, (ctx.rows, grad.shape[-1]),
                                          is_coalesced=True, check_invariants=False)
            return out, None, None, None, None
        out = torch.zeros(ctx.rows, grad.shape[-1], dtype=grad.dtype, device=grad.device)
        return index_add_slots_(out, idx, grad, slot_weights, ctx.pool), None, None, None, None


class DomainEmbedding(nn.Module):
    """H_d: maps one domain's feature fields to ``h_d`` in R^d (paper Eq. 1).

    Built only from that domain's :class:`~cdanet.contract.DomainSchema`; two domains never share a
    table, so heterogeneous inputs need no alignment.

    Field-to-h mapping (the paper leaves it open; ``combiner`` picks it, ``linear`` by default):

    * ``categorical_id`` / ``categorical``: a learned vector per index. Index 0 (OOV) has its own
      learned vector, since "unknown director" is information.
    * ``multi_hot``: mean of the vectors of the non-zero indices of the list (index 0 is padding and
      is ignored, an all-padding row pools to the zero vector), like
      ``nn.EmbeddingBag(mode="mean", padding_idx=0)``.
    * ``dense_vector``: a linear map of the vector.
    * ``combiner="linear"``: every field maps straight into R^d and ``h = sum_f e_f + b``, i.e.
      ``h = W x + b`` for the one-hot / multi-hot / dense input ``x`` (the classic sparse linear
      embedding layer). ``embedding_dim`` is not used: the field vectors have d entries.
    * ``combiner="concat"``: ``embedding_dim``-sized field vectors are concatenated and projected by
      ``Linear(F * embedding_dim, d)``. With ``embedding_dim >= d`` this is the same function class as
      ``linear`` (a linear map of free vectors is a free vector) in a factorised parametrisation that
      costs a ``B x F*e x d`` GEMM forward and two backward; ``linear`` is ~1.3x faster per CDAnet
      step at the paper's sizes.
    * ``combiner="sum"``: the field vectors are summed and projected by ``Linear(embedding_dim, d)``
      (the same as projecting every field to d with one shared matrix and summing).

    No non-linearity follows: h is the embedding, the extractor that reads it is non-linear.

    All categorical and multi-hot fields live in one fused table with per-field row offsets, so a
    forward pass is one gather (one ``embedding_bag`` for ``linear`` / ``sum``) and the backward one
    ``index_add_`` per slot (see :class:`_Lookup`; :meth:`table` gives a single field's rows). Indices
    are range-checked per field, because with a fused table an out-of-range index would otherwise
    silently read another field's rows.

    ``sparse_grad`` (an attribute, False by default, not saved in state dicts): the table's gradient is
    a coalesced sparse tensor of the looked-up rows instead of a dense ``R x width`` one, for optimisers
    that take one (:func:`cdanet.layers.set_fast_paths` sets it), like ``nn.Embedding(sparse=True)``.

    Shapes: ``features`` per the schema (``B``, ``B x max_len``, ``B x dim``) -> ``B x d``;
    :meth:`field_embeddings` gives the ``B x F x width`` field vectors (``width`` = d for ``linear``,
    else ``embedding_dim``), fields in the order of :attr:`field_order` (categorical fields, then
    multi-hot, then dense, each in schema order).
    """

    def __init__(self, schema: DomainSchema, d: int, embedding_dim: int, combiner: str = "linear",
                 history_field: str | None = None, history_len: int = 10, history_init_std: float = 0.0,
                 source_history: FieldSpec | None = None, user_fields: Sequence[str] = (),
                 cross_logit: str = "none", id_cross: bool = False) -> None:
        super().__init__()
        if combiner not in COMBINERS:
            raise ValueError(f"unknown embedding combiner {combiner!r}; expected one of {COMBINERS}")
        if d < 1 or embedding_dim < 1:
            raise ValueError(f"d and embedding_dim must be >= 1, got d={d}, embedding_dim={embedding_dim}")
        self.schema, self.domain = schema, schema.domain
        self.d, self.embedding_dim, self.combiner = d, embedding_dim, combiner
        self.width = d if combiner == "linear" else embedding_dim
        self.sparse_grad = False

        singles = [f for f in schema.fields if f.kind in (FieldKind.CATEGORICAL_ID, FieldKind.CATEGORICAL)]
        multis = [f for f in schema.fields if f.kind is FieldKind.MULTI_HOT]
        denses = [f for f in schema.fields if f.kind is FieldKind.DENSE_VECTOR]
        self._index_fields: tuple[FieldSpec, ...] = (*singles, *multis)
        self._n_single = len(singles)
        self.field_order: tuple[str, ...] = tuple(f.name for f in (*singles, *multis, *denses))

        # Row offsets of every field in the fused table, and per index slot its offset and bound.
        self._row_offset: dict[str, int] = {}
        slot_offsets: list[int] = []
        slot_bounds: list[int] = []
        self._multi_slots: list[tuple[int, int]] = []  # [start, end) slot range of each multi-hot field
        rows = 0
        for f in self._index_fields:
            width = f.max_len if f.kind is FieldKind.MULTI_HOT else 1
            if f.kind is FieldKind.MULTI_HOT:
                self._multi_slots.append((len(slot_offsets), len(slot_offsets) + width))
            self._row_offset[f.name] = rows
            slot_offsets += [rows] * width
            slot_bounds += [f.vocab_size] * width
            rows += f.vocab_size
        self.num_rows = rows
        self.weight: nn.Parameter | None
        self.register_parameter("weight", nn.Parameter(torch.empty(rows, self.width)) if rows else None)
        self.register_buffer("slot_offsets", torch.tensor(slot_offsets, dtype=torch.long), persistent=False)
        self.register_buffer("slot_bounds", torch.tensor(slot_bounds, dtype=torch.long), persistent=False)
        linear = combiner == "linear"
        self.dense = nn.ModuleDict({f.name: nn.Linear(f.dim, self.width, bias=not linear) for f in denses})

        self.proj: nn.Linear | None = None
        self.bias: nn.Parameter | None = None
        if linear:
            self.bias = nn.Parameter(torch.zeros(d))
        else:
            n_fields = len(self.field_order)
            self.proj = nn.Linear(n_fields * embedding_dim if combiner == "concat" else embedding_dim, d)
        self.id_cross = id_cross
        if id_cross:
            if combiner != "linear":
                raise ValueError(f"id_cross needs the linear combiner (user and item vectors of width d), "
                                 f"not {combiner!r}")
            missing = [f for f in (USER_FIELD, ITEM_FIELD) if f not in self._row_offset]
            if missing:
                raise ValueError(f"id_cross of domain {schema.domain!r} needs categorical fields {missing} "
                                 f"(fields: {list(self.field_order)})")
        self.history: UserHistory | None = None
        if history_field is not None:
            self.history = UserHistory(schema, history_field, d, history_len, history_init_std, source_history,
                                       user_fields, cross_logit)
        elif source_history is not None or user_fields or cross_logit != "none":
            raise ValueError(f"a source-domain profile or user fields of domain {schema.domain!r} need the domain's "
                             f"own history field (model.history_fields) to match the row's item")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            # Small init as usual for CTR embeddings: large random vectors for rare ids add noise
            # that Adam needs many steps to remove.
            nn.init.normal_(self.weight, std=0.01)
        for lin in self.dense.values():
            lin.reset_parameters()
        if self.proj is not None:
            self.proj.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def table(self, field: str) -> Tensor:
        """The ``vocab_size x width`` rows of one categorical or multi-hot field (a view)."""
        if field not in self._row_offset:
            raise KeyError(
                f"domain {self.domain!r} has no categorical field {field!r}; "
                f"categorical fields: {list(self._row_offset)}"
            )
        assert self.weight is not None
        start = self._row_offset[field]
        return self.weight[start : start + self.schema.field(field).vocab_size]

    def rows(self, field: str, idx: Tensor) -> Tensor:
        """The vectors of ``field``'s indices ``idx`` (int64 ``B``): ``B x width``, gradients as for the
        other lookups (sparse when :attr:`sparse_grad`)."""
        if field not in self._row_offset:
            raise KeyError(f"domain {self.domain!r} has no categorical field {field!r}")
        assert self.weight is not None
        slots = (idx + self._row_offset[field]).unsqueeze(1)  # B x 1: one slot, pooled
        return _Lookup.apply(self.weight, slots, None, True, self.sparse_grad)

    def _indices(self, features: Mapping[str, Tensor]) -> Tensor:
        """The raw (unshifted) index slots ``B x S`` of all categorical and multi-hot fields."""
        cols = []
        for f in self._index_fields:
            x = self._get(features, f)
            expected = (f.max_len,) if f.kind is FieldKind.MULTI_HOT else ()
            if tuple(x.shape[1:]) != expected or x.dtype != torch.long:
                raise ValueError(
                    f"field {f.name!r} of domain {self.domain!r} ({f.kind.value}) must be int64 of shape "
                    f"[B{', ' + str(f.max_len) if expected else ''}], got {x.dtype} {list(x.shape)}"
                )
            cols.append(x.view(x.shape[0], -1))
        idx = torch.cat(cols, dim=1) if len(cols) > 1 else cols[0]
        if bool(((idx < 0) | (idx >= self.slot_bounds)).any()):
            self._raise_out_of_range(features)
        return idx

    def _raise_out_of_range(self, features: Mapping[str, Tensor]) -> None:
        bad = []
        for f in self._index_fields:
            x = features[f.name]
            if bool(((x < 0) | (x >= f.vocab_size)).any()):
                bad.append(f"{f.name!r} (values {int(x.min())}..{int(x.max())}, vocab_size {f.vocab_size})")
        raise IndexError(
            f"domain {self.domain!r}: indices out of range [0, vocab_size) in field(s) {', '.join(bad)}; "
            "the batch does not match this domain's schema"
        )

    def _get(self, features: Mapping[str, Tensor], f: FieldSpec) -> Tensor:
        try:
            return features[f.name]
        except KeyError:
            raise KeyError(
                f"batch of domain {self.domain!r} has no field {f.name!r} ({f.kind.value}); "
                f"schema fields: {list(self.schema.field_names)}, batch fields: {sorted(features)}"
            ) from None

    def _dense_inputs(self, features: Mapping[str, Tensor]) -> list[tuple[nn.Module, Tensor]]:
        out = []
        for name, lin in self.dense.items():
            x = self._get(features, self.schema.field(name))
            dim = self.schema.field(name).dim
            if x.dim() != 2 or x.shape[1] != dim or not x.is_floating_point():
                raise ValueError(
                    f"field {name!r} of domain {self.domain!r} (dense_vector) must be float of shape "
                    f"[B, {dim}], got {x.dtype} {list(x.shape)}"
                )
            out.append((lin, x))
        return out

    def _multi_hot_weights(self, idx: Tensor, dtype: torch.dtype) -> Tensor:
        """``B x L`` mean-pooling weights of one multi-hot field's slots (padding index 0 weighs 0)."""
        mask = (idx != 0).to(dtype)
        return mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0)

    def field_embeddings(self, features: Mapping[str, Tensor]) -> Tensor:
        """The per-field vectors before combining: ``B x F x width``."""
        parts: list[Tensor] = []
        if self.weight is not None:
            idx = self._indices(features)
            emb = _Lookup.apply(self.weight, idx + self.slot_offsets, None, False, self.sparse_grad)  # B x S x width
            if self._n_single:
                parts.append(emb[:, : self._n_single])
            for start, end in self._multi_slots:
                weights = self._multi_hot_weights(idx[:, start:end], emb.dtype)
                parts.append(torch.bmm(weights.unsqueeze(1), emb[:, start:end]))  # B x 1 x width
        parts += [lin(x).unsqueeze(1) for lin, x in self._dense_inputs(features)]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def pooled(self, features: Mapping[str, Tensor]) -> Tensor:
        """The sum of the field vectors, ``B x width``, without materialising them (one ``embedding_bag``)."""
        total: Tensor | None = None
        if self.weight is not None:
            idx = self._indices(features)
            slot_weights = None
            if self._multi_slots:
                slot_weights = torch.ones(idx.shape, dtype=self.weight.dtype, device=idx.device)
                for start, end in self._multi_slots:
                    slot_weights[:, start:end] = self._multi_hot_weights(idx[:, start:end], self.weight.dtype)
            total = _Lookup.apply(self.weight, idx + self.slot_offsets, slot_weights, True, self.sparse_grad)
        for lin, x in self._dense_inputs(features):
            total = lin(x) if total is None else total + lin(x)
        assert total is not None  # a schema has at least one field
        return total

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.forward_with_cross(features)[0]

    def forward_with_cross(self, features: Mapping[str, Tensor], linked_user: Tensor | None = None
                           ) -> tuple[Tensor, Tensor | None]:
        """``(h, c)``: ``h`` as :meth:`forward` (``B x d``), and the logit cross ``c`` (``B``), None without one:
        the profile layer's (``model.cross_logit``, see :class:`UserHistory`) plus, with :attr:`id_cross`
        (``model.id_cross``), ``<u, i>`` of the row's user and item vectors.

        ``linked_user`` (``B x d``, ``model.shared_users``): another table's vector of the row's user, added
        to ``h`` and to ``u``, as if it were part of this table's user row.
        """
        if self.combiner == "concat":
            assert self.proj is not None
            h = self.proj(self.field_embeddings(features).flatten(1))
        else:
            pooled = self.pooled(features)
            if self.proj is not None:  # sum
                h = self.proj(pooled)
            else:
                assert self.bias is not None
                h = pooled + self.bias
        cross: Tensor | None = None
        if self.history is not None:
            profile, cross = self.history.forward_with_cross(features)
            h = h + profile
        if linked_user is not None:
            h = h + linked_user
        if self.id_cross:
            ids = self._id_cross(features, linked_user)
            cross = ids if cross is None else cross + ids
        return h, cross

    def _id_cross(self, features: Mapping[str, Tensor], linked_user: Tensor | None) -> Tensor:
        """``<u, i>`` (``B``) of the row's user vector (plus ``linked_user``) and item vector: one lookup of
        both rows, so the backward adds one more (sparse) table gradient, not two."""
        assert self.weight is not None
        slots = torch.stack([features[USER_FIELD] + self._row_offset[USER_FIELD],
                             features[ITEM_FIELD] + self._row_offset[ITEM_FIELD]], dim=1)  # B x 2
        pair = _Lookup.apply(self.weight, slots, None, False, self.sparse_grad)  # B x 2 x d
        user, item = pair[:, 0], pair[:, 1]
        if linked_user is not None:
            user = user + linked_user
        return (user * item).sum(dim=1)


#: Init std of the user-attribute table of :class:`UserHistory` (``model.user_fields``).
ATTRIBUTE_INIT_STD = 0.01


def auto_history_std(vocab_size: int) -> float:
    """The default init std of a :class:`UserHistory` table: ``min(2, 8 / sqrt(vocab_size))``.

    Measured (docs/quality.md): a field of 18 values (movie genres) learns best from std 2, one of 713
    (Taobao ad categories) from about 0.3; rare values of a large field keep their random vectors, so
    they must start small.
    """
    return min(2.0, 8.0 / math.sqrt(max(vocab_size, 1)))


class UserHistory(nn.Module):
    """A user's interest profile from their training rows, and its match with the row's item (a named option).

    For one item field F (e.g. a movie's genre), the profile holds the ``history_len`` values of F that
    user u met most often in the training split, with their counts ``c`` and u's total count ``T``
    (exposure, never labels). With a table ``E`` of d-vectors per value of F (its own, not the fused one):

    ``p = sum_k c_k E[v_k] / T`` (the profile vector), ``q = mean E[F(item)]`` (the item's), and the
    output ``p + p * q`` (elementwise): the profile, and a profile-item match whose sum over the d
    coordinates is ``<p, q>``, a factorised cross of profile and item value.

    In training the row's own values are left out of its user's profile (leave-one-out): the profile
    was counted on the training rows, so otherwise every training row would find its own item in it,
    while validation and test rows (never counted) do not.

    With ``source`` (``model.source_history_fields``, a named option) the layer also holds the same
    user's profile over a field G of the *other* domain (e.g. the categories of the books a movie user
    rated), counted on that domain's training split, in two channels with tables of their own:
    exposure ``p_e = sum_k c_k E_G[v_k] / T_s`` and clicks ``p_c = sum_k w_k C_G[v_k]`` with
    ``w_k = (clicks_k - b c_k) / (c_k + 2)``, the user's click rate on value v_k above the other domain's
    base rate b, shrunk towards 0 for few rows. Their sum ``p_s`` adds ``p_s + p_s * q``: the user's
    behaviour in the rich domain, matched with the target row's item. The labels are the other
    domain's, so nothing is left out.

    With ``attributes`` (``model.user_fields``, a named option: e.g. Taobao's age, gender, shopping
    level) the user's attribute vectors ``sum_f A_f[x_f]`` join ``p``, so ``p * q`` also crosses the
    user's attributes with the row's item: the factorised user-attribute x item cross of an FM, which
    the summed embedding ``h`` cannot form by itself.

    With ``cross_logit`` (``model.cross_logit``, a named option) the sum over the d coordinates of one
    of these crosses is also returned as a logit term (:meth:`forward_with_cross`): ``<a, q>`` with
    ``a = sum_f A_f[x_f]`` ("attributes"), or ``<p, q>`` with the whole profile ("profile"). The models
    add it to the domain's logit, the FM part of a DeepFM beside the tower (docs/quality.md).

    Shapes: ``features`` (needs ``user_id`` and F) -> ``B x d``. The profiles are held in persistent
    buffers (``n_users x history_len``), so they travel with the model (serving, stage 2).
    """

    def __init__(self, schema: DomainSchema, field: str, d: int, history_len: int = 10, init_std: float = 0.0,
                 source: FieldSpec | None = None, attributes: Sequence[str] = (), cross_logit: str = "none") -> None:
        super().__init__()
        if cross_logit not in ("none", "attributes", "profile"):
            raise ValueError(f"unknown cross_logit {cross_logit!r}; expected 'none', 'attributes' or 'profile'")
        if cross_logit == "attributes" and not attributes:
            raise ValueError(f"cross_logit 'attributes' of domain {schema.domain!r} needs user attribute fields")
        self.cross_logit = cross_logit
        spec = schema.field(field)
        for f, dom in ((spec, schema.domain), (source, "the other domain")):
            if f is not None and f.kind not in (FieldKind.CATEGORICAL, FieldKind.MULTI_HOT):
                raise ValueError(f"history field {f.name!r} of {dom!r} must be categorical or multi-hot, "
                                 f"not {f.kind.value}")
        users = schema.field(USER_FIELD)
        self.field, self.multi = field, spec.kind is FieldKind.MULTI_HOT
        self.init_std = init_std if init_std > 0 else auto_history_std(spec.vocab_size)
        self.source_init_std = init_std if init_std > 0 or source is None else auto_history_std(source.vocab_size)
        self.table = nn.Embedding(spec.vocab_size, d)  # row 0 (padding) is zeroed and weighs 0 in every bag
        self.register_buffer("values", torch.zeros(users.vocab_size, history_len, dtype=torch.long))
        self.register_buffer("counts", torch.zeros(users.vocab_size, history_len))
        self.register_buffer("totals", torch.zeros(users.vocab_size))
        self.source_field = None if source is None else source.name
        self.source_table: nn.Embedding | None = None
        self.click_table: nn.Embedding | None = None
        if source is not None:
            self.source_table = nn.Embedding(source.vocab_size, d)
            self.click_table = nn.Embedding(source.vocab_size, d)
            self.register_buffer("source_values", torch.zeros(users.vocab_size, history_len, dtype=torch.long))
            self.register_buffer("source_counts", torch.zeros(users.vocab_size, history_len))
            self.register_buffer("source_totals", torch.zeros(users.vocab_size))
            self.register_buffer("source_clicks", torch.zeros(users.vocab_size, history_len))
        # model.user_fields: one table over the listed user-attribute fields, row blocks in field order.
        specs = [schema.field(name) for name in attributes]
        bad = [f.name for f in specs if f.kind is not FieldKind.CATEGORICAL]
        if bad:
            raise ValueError(f"user fields {bad} of domain {schema.domain!r} must be categorical")
        self.attribute_fields = tuple(attributes)
        self._attribute_sizes = tuple(f.vocab_size for f in specs)
        self.attribute_table: nn.Embedding | None = None
        if specs:
            self.attribute_table = nn.Embedding(sum(self._attribute_sizes), d)
            offsets = torch.tensor([0, *self._attribute_sizes[:-1]]).cumsum(0)
            self.register_buffer("attribute_offsets", offsets, persistent=False)
        # The "profile" cross <p, q> starts with a std of about sqrt(d) init_std^2 (8 x 3.6 = 29 logits
        # for movie genres' std 1.9): such a start drowns every other logit term, so it is scaled to a std
        # of at most 1 (docs/quality.md, "The cross on the logit").
        self.cross_scale = 1.0 / max(1.0, math.sqrt(d) * self.init_std ** 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Far larger than the id tables' 0.01: the match p * q is a product of two table vectors, and
        # with small vectors it learns too slowly to matter before the id embeddings overfit.
        for table, std in ((self.table, self.init_std), (self.source_table, self.source_init_std),
                           (self.click_table, self.source_init_std)):
            if table is not None:
                nn.init.normal_(table.weight, std=std)
                with torch.no_grad():
                    table.weight[0].zero_()
        if self.attribute_table is not None:
            # Small, like the id tables: the item side q of the cross is already large, so a_f * q learns
            # at once; large random attribute vectors would add noise to every user's profile.
            nn.init.normal_(self.attribute_table.weight, std=ATTRIBUTE_INIT_STD)

    @staticmethod
    def _copy(buffers: Sequence[Tensor], new: Sequence[Tensor]) -> None:
        """Copy ``new`` into the profile ``buffers``, all shapes checked before any is written."""
        for buf, t in zip(buffers, new, strict=True):
            if t.shape != buf.shape:
                raise ValueError(f"profile tensor of shape {list(t.shape)}, expected {list(buf.shape)}")
        for buf, t in zip(buffers, new, strict=True):
            buf.copy_(t)

    def set_profile(self, values: Tensor, counts: Tensor, totals: Tensor) -> None:
        """Set the profile: ``values``/``counts`` ``n_users x history_len`` (value 0 = none), ``totals`` ``n_users``."""
        self._copy((self.values, self.counts, self.totals), (values, counts, totals))

    def set_source_profile(self, values: Tensor, counts: Tensor, totals: Tensor, clicks: Tensor) -> None:
        """Set the other domain's profile, indexed by *this* domain's users: shapes as :meth:`set_profile`,
        and ``clicks`` (``n_users x history_len``) the click weights ``w_k`` of the values."""
        if self.source_table is None:
            raise ValueError("this profile layer was built without a source field (model.source_history_fields)")
        self._copy((self.source_values, self.source_counts, self.source_totals, self.source_clicks),
                   (values, counts, totals, clicks))

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.forward_with_cross(features)[0]

    def forward_with_cross(self, features: Mapping[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """``(p + p * q, c)``: the layer's ``B x d`` output and its logit cross ``c`` (``B``), None when
        ``cross_logit`` is "none"."""
        users = features[USER_FIELD]
        x = features[self.field]
        x = x if self.multi else x.unsqueeze(1)  # B x L item values, 0 = padding
        # index_select, not buf[users]: the same rows, ~3x faster on CPU (advanced indexing's generic kernel)
        values, counts = self.values.index_select(0, users), self.counts.index_select(0, users)
        total = self.totals.index_select(0, users)
        mask = (x != 0).to(counts.dtype)
        if self.training:  # leave the row's own values out of its user's profile: one bag with negative weights
            counted = (x.unsqueeze(2) == values.unsqueeze(1)).any(2).to(counts.dtype) * mask  # B x L
            values, counts = torch.cat([values, x], dim=1), torch.cat([counts, -counted], dim=1)
            total = total - counted.sum(1)
        # Weighted bags through _Lookup (its backward is cheaper than embedding_bag's on CPU); padding
        # slots weigh 0, so they add nothing either way.
        weight = self.table.weight
        p = _Lookup.apply(weight, values, counts, True) / total.clamp_min(1.0).unsqueeze(1)
        q = _Lookup.apply(weight, x, mask / mask.sum(1, keepdim=True).clamp_min(1.0), True)
        if self.source_table is not None and self.click_table is not None:
            values_s = self.source_values.index_select(0, users)
            total_s = self.source_totals.index_select(0, users).clamp_min(1.0).unsqueeze(1)
            p = p + _Lookup.apply(self.source_table.weight, values_s, self.source_counts.index_select(0, users),
                                  True) / total_s
            p = p + _Lookup.apply(self.click_table.weight, values_s, self.source_clicks.index_select(0, users), True)
        cross = None
        if self.attribute_table is not None:
            slots = torch.stack([features[f] for f in self.attribute_fields], dim=1) + self.attribute_offsets
            a = _Lookup.apply(self.attribute_table.weight, slots, None, True)
            if self.cross_logit == "attributes":
                cross = (a * q).sum(1)
            p = p + a
        match = p * q
        if self.cross_logit == "profile":
            cross = match.sum(1) * self.cross_scale
        return p + match, cross
