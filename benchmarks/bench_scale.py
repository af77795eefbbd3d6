"""How the pipeline's cost grows with the data: time and peak memory per step at several sizes, and the
fitted growth exponent (the slope of log cost against log raw rows).

Each scale simulates the raw files of ``--dataset`` at a simulator preset, then runs the pipeline's
steps one after another with the library's step functions (``cdanet.steps``, what the components
call): configure, preprocess (Beam), validate (GX), pretrain, finetune, evaluate. Every step runs in
its own Python process, so its peak memory is its own: the largest resident set of the process and
of its children (Beam's worker processes), from ``getrusage``. Each step's log (training's per-validation lines included)
is written to ``<workdir>/<scale>/<step>.log`` as the step runs. gate + register (MLflow) are left
out: their cost does not grow with the data (23 s at the Taobao preset, the issue's table).

    .venv/bin/python -m benchmarks.bench_scale --scales tiny small
    .venv/bin/python -m benchmarks.bench_scale --scales tiny small paper   # the Taobao preset: ~30 min, ~7 GB

The growth fit: for each step, cost = a * rows^b (rows: the raw interaction rows of both domains, as
the issue counts "4.5M ad + 15M rec raw rows") by least squares on log-log (b = 1: linear; the
slope between the two largest sizes is printed too, because fixed costs flatten the small end).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS: tuple[str, ...] = ("configure", "preprocess", "validate", "pretrain", "finetune", "evaluate")
DATASETS: tuple[str, ...] = ("taobao", "amazon")


# ---- one step, in its own process ----------------------------------------------------------------


def _run_step(step: str, w: dict[str, str], params: dict[str, str]) -> None:
    """Run ``step`` with the work folder ``w`` (paths) and the run's ``params``."""
    from cdanet import steps

    if step == "configure":
        cfg = steps.configure(
            dataset=params["dataset"], target_domain="", raw_uri=w["raw"], glove_uri=w["glove"],
            profile=params["profile"], extra_overrides=json.loads(params["overrides"]), min_auc=0.0, tolerance=0.0,
            baseline_margin=0.0, max_epochs=int(params["max_epochs"]) if params["max_epochs"] else None)
        with open(w["config"], "w") as fh:
            fh.write(cfg.to_json())
    elif step == "preprocess":
        steps.preprocess(w["config"], w["raw"], w["glove"], w["processed"], "", 0, json.loads(params["beam_args"]))
    elif step == "validate":
        steps.validate(w["config"], w["processed"], os.path.join(w["root"], "validation.html"))
    elif step == "pretrain":
        steps.pretrain(w["config"], w["processed"], w["stage1"])
    elif step == "finetune":
        steps.finetune(w["config"], w["processed"], w["stage1"], w["stage2"], os.path.join(w["root"], "curves.html"))
    elif step == "evaluate":
        out = steps.evaluate(w["stage2"], w["processed"], os.path.join(w["root"], "predictions"),
                             pretrained_dir=w["stage1"])
        print(json.dumps({"metrics": {k: v for k, v in out.metrics.items() if k.endswith("_test_auc")}}))
    else:
        raise SystemExit(f"unknown step {step!r}; expected one of {STEPS}")


def _own_peak_kib() -> int:
    """This process's own peak RSS. Linux's ``ru_maxrss`` starts an exec'd child at its parent's RSS
    at fork time (the bench's parent holds the simulation's gigabytes), so read the memory map's
    high-water mark (``VmHWM``), which starts afresh at exec; ``ru_maxrss`` elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_mb() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # forked from this step: its own size at most
    return max(_own_peak_kib(), children) / 1024  # Linux: KiB


def step_main(step: str, work: str, params_json: str) -> None:
    """Child process entry: run one step, print ``RESULT {seconds, peak_rss_mb, ...}``."""
    w = json.loads(work)
    # stderr is the step's log file (run_scale): the library's progress lines, with times
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    _run_step(step, w, json.loads(params_json))
    print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb()}), flush=True)


# ---- a scale: simulate, then every step ----------------------------------------------------------


def run_scale(scale: str, dataset: str, root: str, params: dict[str, str]) -> dict[str, object]:
    from cdanet.simulate import simulate

    t0 = time.perf_counter()
    manifest = simulate(os.path.join(root, "raw"), dataset=dataset, scale=scale, seed=0)
    simulate_s = time.perf_counter() - t0
    rows = sum(f["data_rows"] for f in manifest.files.values() if f.get("data_rows"))
    interactions = sum(int(s.get("rows", 0)) for s in manifest.domains.values() if isinstance(s, dict))
    glove = ""
    if dataset == "amazon":
        glove_dir = os.path.join(root, "raw", "glove")
        glove = os.path.join(glove_dir, sorted(os.listdir(glove_dir))[0])
    w = {"root": root, "raw": os.path.join(root, "raw", dataset), "glove": glove,
         "config": os.path.join(root, "config.json"), "processed": os.path.join(root, "processed"),
         "stage1": os.path.join(root, "stage1"), "stage2": os.path.join(root, "stage2")}
    result: dict[str, object] = {"scale": scale, "raw_rows": rows, "interaction_rows": interactions,
                                 "simulate_s": simulate_s, "steps": {}}
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for step in STEPS:
        # The step's log (training's per-validation lines) goes to a file as it runs, so a step of
        # half an hour can be watched: tail -f <workdir>/<scale>/<step>.log
        log_path = os.path.join(root, f"{step}.log")
        with open(log_path, "w") as log:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_scale", "--step", step, "--work", json.dumps(w),
                 "--params", json.dumps({**params, "dataset": dataset})],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0:
            with open(log_path) as log:
                tail = log.read()[-3000:]
            raise SystemExit(f"step {step} at scale {scale} failed (log: {log_path}):\n{proc.stdout[-2000:]}\n{tail}")
        lines = proc.stdout.splitlines()
        measured = json.loads(next(x for x in reversed(lines) if x.startswith("RESULT "))[len("RESULT "):])
        for x in lines:
            if x.startswith('{"metrics"'):
                result["test_auc"] = json.loads(x)["metrics"]
        result["steps"][step] = measured  # type: ignore[index]
        print(f"  {scale:>7} {step:<10} {measured['seconds']:8.1f} s  {measured['peak_rss_mb']:8.0f} MB", flush=True)
    return result


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) on log(x): the exponent b of y = a x^b (nan with < 2 points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return float("nan") if sxx == 0 else sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def _slope(xs: Sequence[float], ys: Sequence[float]) -> str:
    """:func:`fit_slope` for the table; "-" where there is nothing to fit (one scale)."""
    b = fit_slope(xs, ys)
    return "-" if math.isnan(b) else f"{b:.2f}"


def report(results: list[dict[str, object]]) -> str:
    """The per-step table (seconds / peak MB per scale) and each step's fitted growth exponents."""
    scales = [str(r["scale"]) for r in results]
    rows = [float(r["interaction_rows"]) for r in results]  # type: ignore[arg-type]
    head = "| step | " + " | ".join(f"{s} s / MB" for s in scales) + " | time slope (all / last 2) | memory slope |"
    lines = ["raw interaction rows (x of the fit): " + ", ".join(f"{s} {int(n):,}" for s, n in zip(scales, rows, strict=True)), "",
             head, "|" + "---|" * (len(scales) + 3)]
    totals = [0.0] * len(results)
    for step in STEPS:
        secs = [float(r["steps"][step]["seconds"]) for r in results]  # type: ignore[index]
        mems = [float(r["steps"][step]["peak_rss_mb"]) for r in results]  # type: ignore[index]
        totals = [t + s for t, s in zip(totals, secs, strict=True)]
        cells = " | ".join(f"{s:.1f} / {m:.0f}" for s, m in zip(secs, mems, strict=True))
        lines.append(f"| {step} | {cells} | {_slope(rows, secs)} / {_slope(rows[-2:], secs[-2:])} | {_slope(rows, mems)} |")
    lines.append("| **total** | " + " | ".join(f"{t:.1f}" for t in totals)
                 + f" | {_slope(rows, totals)} / {_slope(rows[-2:], totals[-2:])} | |")
    for r in results:
        if "test_auc" in r:
            lines.append(f"{r['scale']}: test AUC {r['test_auc']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", nargs="+", default=["tiny", "small", "medium"],
                   help="simulator presets, smallest first (tiny small medium movie paper; paper = the Taobao preset)")
    p.add_argument("--dataset", choices=DATASETS, default="taobao")
    p.add_argument("--profile", default="paper", choices=["paper", "strict", "tiny"])
    p.add_argument("--max-epochs", default="", help="override the profile's max_epochs (default: the profile's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every scale (repeatable)")
    p.add_argument("--beam-arg", dest="beam_args", action="append", default=None, metavar="ARG",
                   help="a Beam pipeline option (repeatable; default: the job's DirectRunner default)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder, removed)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the measurements as JSON")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        step_main(args.step, args.work, args.params)
        return 0
    from cdanet.simulate import SCALES

    unknown = [s for s in args.scales if s not in SCALES]
    if unknown:
        p.error(f"--scales: unknown {unknown}; expected some of {sorted(SCALES)}")
    params = {"profile": args.profile, "max_epochs": args.max_epochs, "overrides": json.dumps(args.overrides),
              "beam_args": json.dumps(args.beam_args or [])}
    base = args.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    print(f"bench_scale: {args.dataset}, profile {args.profile}, scales {args.scales}, in {base}", flush=True)
    results = []
    try:
        for scale in args.scales:
            results.append(run_scale(scale, args.dataset, os.path.join(base, scale), params))
    finally:
        if args.workdir is None:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    print()
    print(report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
