"""The GPU check (``benchmarks/gpu_check.sh`` runs it): CDAnet stage 1 and stage 2 at Taobao table sizes
with bf16 autocast, then a tiny end-to-end training run for its AUC.

Prints, per stage: samples/s (rows of every domain a step trains on, over the timed steps, after a
warm-up), ms per step and peak GPU memory (``torch.cuda.max_memory_allocated``); then the test AUC of a
tiny run (synthetic processed data, the tiny profile, both stages) on the same device.

Taobao table sizes (:data:`TAOBAO_SIZES`: the simulator's Taobao preset after k-core, ad 252k users /
105k items, rec 343k users / 240k items, and the real files' side vocabularies); the paper profile's
model (``paper_config("taobao")``, the pipeline's default).

    python -m benchmarks.gpu_check                       # on a GPU: the real check (< 5 min on an H200)
    python -m benchmarks.gpu_check --device cpu --tiny   # CI: the same code path at tiny sizes on CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

import torch

from cdanet.batch import Batch, random_batch
from cdanet.config import paper_config, tiny_config
from cdanet.contract import USER_PROFILE_FIELDS, DomainSchema, FieldKind, FieldSpec
from cdanet.layers import set_fast_paths
from cdanet.losses import compute_loss
from cdanet.models import AugmentationNetwork, build_model
from cdanet.training.optim import make_optimizer, training_fast_paths

#: Vocabulary sizes at the Taobao preset (the issue's Table 1 figures after k-core for users and items;
#: the real files' ~6.8k ad categories / ~100k brands / ~420k campaigns / ~255k advertisers; the
#: behaviour log's ~9.4k categories); tiny for --tiny.
TAOBAO_SIZES = {"ad_users": 252_000, "ad_items": 105_000, "ad_category": 6_800, "brand": 100_000,
                "campaign": 105_000, "customer": 80_000, "rec_users": 343_000, "rec_items": 240_000,
                "rec_category": 9_400}
TINY_SIZES = {k: max(20, v // 1000) for k, v in TAOBAO_SIZES.items()}


def taobao_schemas(n: dict[str, int]) -> dict[str, DomainSchema]:
    """The processed Taobao fields (those cdanet.preprocessing writes) with the vocabulary sizes ``n``."""
    cat = FieldKind.CATEGORICAL
    ad = DomainSchema("taobao", "ad", (
        FieldSpec("user_id", FieldKind.CATEGORICAL_ID, vocab_size=n["ad_users"]),
        FieldSpec("item_id", FieldKind.CATEGORICAL_ID, vocab_size=n["ad_items"]),
        *(FieldSpec(f, cat, vocab_size=12) for f in USER_PROFILE_FIELDS),
        FieldSpec("category", cat, vocab_size=n["ad_category"]),
        FieldSpec("brand", cat, vocab_size=n["brand"]),
        FieldSpec("campaign", cat, vocab_size=n["campaign"]),
        FieldSpec("customer", cat, vocab_size=n["customer"]),
        FieldSpec("price_bucket", cat, vocab_size=24),
        FieldSpec("pid", cat, vocab_size=3),
    ))
    rec = DomainSchema("taobao", "rec", (
        FieldSpec("user_id", FieldKind.CATEGORICAL_ID, vocab_size=n["rec_users"]),
        FieldSpec("item_id", FieldKind.CATEGORICAL_ID, vocab_size=n["rec_items"]),
        FieldSpec("category", cat, vocab_size=n["rec_category"]),
    ))
    return {"ad": ad, "rec": rec}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_stage(model: torch.nn.Module, schemas: dict[str, DomainSchema], device: torch.device, batch_size: int,
                steps: int, warmup: int, bf16: bool) -> dict[str, float]:
    """Train ``model`` for ``warmup`` + ``steps`` steps on random batches already on ``device``."""
    model.to(device).train()
    gen = torch.Generator().manual_seed(0)
    batches: list[dict[str, Batch]] = [
        {d: random_batch(schemas[d], batch_size, gen).to(device) for d in model.train_domains} for _ in range(4)]
    set_fast_paths(model, training_fast_paths(device))
    opt = make_optimizer(model, 1e-3, 0.0, device)
    autocast: Any = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    def step(i: int) -> None:
        with autocast:
            loss = compute_loss(model, batches[i % len(batches)]).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(warmup):
        step(i)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    seconds = time.perf_counter() - t0
    rows = batch_size * len(model.train_domains) * steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"samples_per_s": rows / seconds, "ms_per_step": 1e3 * seconds / steps, "peak_gpu_mb": peak,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def tiny_run_auc(device: torch.device, bf16: bool) -> float:
    """Test AUC of the target domain after a tiny two-stage run on synthetic processed Taobao-like data."""
    from cdanet.synthetic import write_synthetic_processed
    from cdanet.training import run_experiment

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        write_synthetic_processed(f"{tmp}/processed", "taobao", seed=1)
        cfg = tiny_config("taobao").with_overrides(
            [f"train.device={device.type}", f"train.mixed_precision={'true' if bf16 else 'false'}"])
        result = run_experiment(cfg, f"{tmp}/processed", f"{tmp}/out")
        return float(result.test[cfg.target_domain].auc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny tables and few steps (CI on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per stage (default 300; tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20; tiny 1)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per domain per step (default 8192; tiny 64)")
    p.add_argument("--no-bf16", action="store_true", help="float32 instead of bf16 autocast")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda}); "
              "run on a GPU machine with a CUDA build of torch, or pass --device cpu --tiny", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    steps = args.steps if args.steps is not None else (3 if args.tiny else 300)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 20)
    batch_size = args.batch_size if args.batch_size is not None else (64 if args.tiny else 8192)
    bf16 = not args.no_bf16
    torch.manual_seed(0)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        print(f"device: cpu, torch {torch.__version__}, {torch.get_num_threads()} threads")

    schemas = taobao_schemas(TINY_SIZES if args.tiny else TAOBAO_SIZES)
    cfg = paper_config("taobao")
    if args.tiny:
        cfg.model.d = cfg.model.embedding_dim = cfg.model.tower_hidden = 8
    stage1 = build_model(cfg.validate(), schemas)
    figures: dict[str, Any] = {"device": str(device), "bf16": bf16, "batch_size": batch_size, "steps": steps}
    figures["stage1"] = bench_stage(stage1, schemas, device, batch_size, steps, warmup, bf16)
    stage2 = AugmentationNetwork.from_translation(stage1)
    figures["stage2"] = bench_stage(stage2, schemas, device, batch_size, steps, warmup, bf16)
    for stage in ("stage1", "stage2"):
        f = figures[stage]
        print(f"{stage}: {f['samples_per_s']:,.0f} samples/s, {f['ms_per_step']:.2f} ms/step, "
              f"peak GPU memory {f['peak_gpu_mb']:,.0f} MB, {f['params_m']:.1f}M parameters "
              f"(batch {batch_size} per domain, {steps} steps, {'bf16' if bf16 else 'fp32'})")
    t0 = time.perf_counter()
    figures["tiny_run_test_auc"] = tiny_run_auc(device, bf16)
    print(f"tiny run: test AUC {figures['tiny_run_test_auc']:.4f} ({time.perf_counter() - t0:.1f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
