"""Where one CDAnet stage-1 training step spends its time, by subtraction rather than by profiler.

``torch.profiler`` inflates and misattributes small CPU ops (it reports the embedding tables'
gradient zero-fill at ~4 ms, while timing it inside the step gives under 1 ms), so this script times
variants of the same step instead, interleaved round by round in one process so that host drift hits
them all alike:

* ``step``: forward, loss, backward and Adam (what ``bench_models.py`` measures);
* ``forward + backward``: the same without the optimiser step;
* ``optimizer step``: Adam alone on the gradients left by the previous variant;
* ``forward`` (no autograd graph);
* ``extractor..loss fwd+bwd``: the step with the embedding layer bypassed (fixed ``h`` leaf tensors),
  so ``forward + backward`` minus this is the embedding layer's share;
* the same at 16 rows per domain: what the ~100 ops of the dense part cost with (almost) no data,
  i.e. per-op dispatch and Python.
* ``step, no source profile``: the whole step of the same model built without the source-domain
  profile (``model.source_history_fields={}``, the inputs of the code before it, ``eba27b8``), so the
  ratio of the two steps is what the defaults' source profile costs, measured in one process.

It also prints the step's matmul FLOPs and the sgemm rate the machine gives at that moment, so the
GEMM share of the step can be bounded. Sizes as in ``bench_models.py``.

    .venv/bin/python -m benchmarks.bench_step_breakdown --rounds 15 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_models import bench_schemas, machine_probe
from cdanet.batch import random_batch
from cdanet.config import paper_config
from cdanet.layers import set_fast_paths
from cdanet.losses import compute_loss
from cdanet.models import build_model
from cdanet.training.optim import make_optimizer, retain_heap, training_fast_paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15, help="rounds; each times every variant twice")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4096, help="rows per domain and step")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    retain_heap()
    schemas = bench_schemas(30_000, 16_000, 50)
    net = build_model(paper_config("amazon", model="cdanet"), schemas).train()
    set_fast_paths(net, training_fast_paths(torch.device("cpu")))  # as the trainer does
    opt = make_optimizer(net, 1e-3, 0.0, torch.device("cpu"))
    torch.manual_seed(0)
    plain_cfg = paper_config("amazon", model="cdanet").with_overrides(["model.source_history_fields={}"]).validate()
    plain = build_model(plain_cfg, schemas).train()
    set_fast_paths(plain, training_fast_paths(torch.device("cpu")))
    plain_opt = make_optimizer(plain, 1e-3, 0.0, torch.device("cpu"))
    s, t = net.source, net.target
    gen = torch.Generator().manual_seed(0)

    def batches(rows: int) -> list[dict]:
        return [{d: random_batch(schemas[d], rows, gen) for d in (s, t)} for _ in range(4)]

    full, tiny = batches(args.batch_size), batches(16)

    def fixed_h(steps: list[dict]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            h = net.embed(steps[0], (s, t))
        return {d: h[d].clone().requires_grad_() for d in (s, t)}

    h_full, h_tiny = fixed_h(full), fixed_h(tiny)

    def fwd_bwd(steps: list[dict], i: int, h: dict[str, torch.Tensor] | None = None) -> None:
        opt.zero_grad(set_to_none=True)
        if h is not None:
            net.embed = lambda _batches, _domains=None: h  # bypass H_d: the extractor reads fixed h
        try:
            compute_loss(net, steps[i % 4]).total.backward()
        finally:
            net.__dict__.pop("embed", None)

    def step(i: int) -> None:
        fwd_bwd(full, i)
        opt.step()

    def plain_step(i: int) -> None:
        plain_opt.zero_grad(set_to_none=True)
        compute_loss(plain, full[i % 4]).total.backward()
        plain_opt.step()

    def forward(i: int) -> None:
        with torch.no_grad():
            compute_loss(net, full[i % 4])

    variants: dict[str, Callable[[int], None]] = {
        "step": step,
        "forward + backward": lambda i: fwd_bwd(full, i),
        "optimizer step": lambda i: opt.step(),
        "forward (no graph)": forward,
        "extractor..loss fwd+bwd": lambda i: fwd_bwd(full, i, h_full),
        "same at 16 rows/domain": lambda i: fwd_bwd(tiny, i, h_tiny),
        "step, no source profile": plain_step,
    }
    with FlopCounterMode(display=False) as flops:
        fwd_bwd(full, 0)
    gflop = flops.get_total_flops() / 1e9
    step(0)
    times: dict[str, list[float]] = {k: [] for k in variants}
    gemm_before, _ = machine_probe(args.threads)
    for r in range(args.rounds):
        for name, fn in variants.items():
            fn(r)  # warm: the optimiser step needs gradients from the variant before it
            t0 = time.perf_counter()
            fn(r + 1)
            fn(r + 2)
            times[name].append((time.perf_counter() - t0) / 2)
    gemm_after, _ = machine_probe(args.threads)

    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    rows = 2 * args.batch_size
    print(f"# CDAnet stage 1, {args.batch_size} rows per domain, {args.threads} thread(s), "
          f"median of {args.rounds} rounds x 2 (variants interleaved)")
    for name, ms in med.items():
        print(f"{name:<28}{ms:8.1f} ms")
    emb = med["forward + backward"] - med["extractor..loss fwd+bwd"]
    gemm_lo, gemm_hi = (gflop / g * 1e3 for g in (max(gemm_before, gemm_after), min(gemm_before, gemm_after)))
    print(f"# step: {rows / med['step'] * 1e3:,.0f} samples/s; {gflop:.2f} GFLOP of matmuls per step "
          f"(forward + backward), {gflop / med['step'] * 1e3:.0f} GFLOP/s effective")
    print(f"# sgemm probe {gemm_before:.0f} -> {gemm_after:.0f} GFLOP/s: the matmuls alone would take "
          f"{gemm_lo:.0f}-{gemm_hi:.0f} ms at that rate")
    print(f"# embedding layer (fwd+bwd, by subtraction): {emb:.1f} ms; dispatch floor of the dense part: "
          f"{med['same at 16 rows/domain']:.1f} ms")
    print(f"# the defaults' step is {med['step'] / med['step, no source profile']:.3f}x the step without the "
          f"source profile (model.source_history_fields={{}})")
    print("# reproduce: .venv/bin/python -m benchmarks.bench_step_breakdown " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
