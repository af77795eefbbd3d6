"""Latency and throughput of the served model over loopback HTTP (``mlflow models serve``).

Serves a model with MLflow's scoring server (``mlflow models serve --env-manager local``, one
worker) on 127.0.0.1 and sends ``/invocations`` requests of raw rows (``dataframe_records``, as a
client holding raw ids sends them) one after another over one keep-alive connection, after
``--warmup`` untimed ones. For each batch size it prints the median and 99th-percentile request
latency and the throughput in requests and rows per second. Without ``--model`` it first trains a
tiny CDAnet (one epoch on the synthetic Amazon data, book target, with vocabularies) and saves it
as the registry would (:func:`cdanet.serving.save_served_model`).

    .venv/bin/python -m benchmarks.bench_serving --batch-sizes 1 256 --requests 200 --threads 1
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TARGET = "book"


def add_vocabularies(root: str, domains: tuple[str, ...] = ("movie", "book")) -> None:
    """Give synthetic processed data the vocabularies preprocessing would have written: ids from the
    raw id columns, other categorical values named ``<field>-<index>``."""
    from cdanet.contract import SPLITS, load_schemas, split_files, write_vocabularies
    from cdanet.contract.vocab import processed_vocab_dir

    for domain, schema in load_schemas(root, domains).items():
        rows = pa.concat_tables([pq.read_table(f) for s in SPLITS for f in split_files(os.path.join(root, domain), s)])
        vocabs = {}
        for spec in schema.fields:
            if not spec.is_categorical:
                continue
            values = ["<OOV>"] + [f"{spec.name}-{i}" for i in range(1, spec.vocab_size)]
            if spec.name in ("user_id", "item_id"):
                raw = rows.column(f"{spec.name}_raw").to_pylist()
                for index, value in zip(rows.column(spec.name).to_numpy(), raw, strict=True):
                    values[index] = value
            vocabs[spec.name] = values
        write_vocabularies(processed_vocab_dir(root, schema), vocabs)


def tiny_served_model(workdir: str, threads: int) -> str:
    """Train the tiny model and save it as the served MLflow model; return its folder."""
    from cdanet.config import tiny_config
    from cdanet.serving import CDAnetPyfunc, example_frame, read_rows, save_served_model
    from cdanet.synthetic import write_synthetic_processed
    from cdanet.training import run_experiment

    processed = os.path.join(workdir, "processed")
    write_synthetic_processed(processed, "amazon", seed=0)
    add_vocabularies(processed)
    cfg = tiny_config("amazon", target_domain=TARGET).with_overrides(
        ["train.max_epochs=1", f"train.num_threads={threads}", "train.batch_size=256"]
    ).validate()
    model_dir = run_experiment(cfg, processed, os.path.join(workdir, "experiment")).model_dir
    scorer = CDAnetPyfunc.from_model_dir(model_dir)
    example = example_frame(scorer.schema, read_rows(processed, scorer.schema, "test", limit=5),
                            scorer.vocabularies[TARGET])
    return save_served_model(os.path.join(workdir, "model"), model_dir, input_example=example)


def raw_records(model_path: str, n: int) -> list[dict]:
    """``n`` raw rows for the model: its logged input example's rows, repeated."""
    with open(os.path.join(model_path, "serving_input_example.json")) as fh:
        example = json.load(fh)
    split = example["dataframe_split"]
    rows = [dict(zip(split["columns"], values, strict=True)) for values in split["data"]]
    return [rows[i % len(rows)] for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, threads: int, log_path: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
           "--host", "127.0.0.1", "-p", str(port), "-w", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           # the server runs `uvicorn` from PATH: this interpreter's
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    print(f"# server: {shlex.join(cmd)}", flush=True)
    log = open(log_path, "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(server: subprocess.Popen, port: int, log_path: str, timeout: float = 300.0) -> float:
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        if server.poll() is not None or time.monotonic() - start > timeout:
            raise SystemExit(f"the server did not come up; its log ({log_path}):\n" + open(log_path).read()[-3000:])
        time.sleep(0.25)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def measure(port: int, body: bytes, requests: int, warmup: int) -> list[float]:
    """Seconds per request of ``requests`` sequential POSTs on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    times = []
    try:
        for i in range(warmup + requests):
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - t0
            if response.status != 200:
                raise SystemExit(f"/invocations answered {response.status}: {payload[:500]!r}")
            if i >= warmup:
                times.append(elapsed)
    finally:
        conn.close()
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="an MLflow model folder or URI to serve (default: train the tiny model)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    p.add_argument("--requests", type=int, default=200, help="timed requests per batch size")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)")
    args = p.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
        p.error("need --requests >= 1, --warmup >= 0 and batch sizes >= 1")

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    print(f"# command: {shlex.join([sys.executable, '-m', 'benchmarks.bench_serving', *(argv or sys.argv[1:])])}")
    with tempfile.TemporaryDirectory(prefix="cdanet-bench-serving-") as workdir:
        model = args.model
        if model is None:
            t0 = time.perf_counter()
            model = tiny_served_model(workdir, args.threads)
            print(f"# trained and saved the tiny model in {time.perf_counter() - t0:.1f} s: {model}")
        local = model if os.path.isdir(model) else None
        if local is None:
            import mlflow

            local = mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=os.path.join(workdir, "dl"))
        port = free_port()
        log_path = os.path.join(workdir, "server.log")
        server = start_server(local, port, args.threads, log_path)
        try:
            print(f"# server ready after {wait_ready(server, port, log_path):.1f} s on 127.0.0.1:{port}")
            print(f"# {args.requests} timed requests per batch size after {args.warmup} warm-up, one connection")
            print(f"{'batch':>6} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'req/s':>9} {'rows/s':>10}")
            for batch in args.batch_sizes:
                body = json.dumps({"dataframe_records": raw_records(local, batch)}).encode()
                times = measure(port, body, args.requests, args.warmup)
                p50, p99 = (float(np.percentile(times, q)) * 1e3 for q in (50, 99))
                mean = statistics.fmean(times)
                print(f"{batch:>6} {p50:>9.2f} {p99:>9.2f} {mean * 1e3:>9.2f} {1 / mean:>9.1f} {batch / mean:>10.0f}",
                      flush=True)
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
