"""The ``cdanet`` command line: train + evaluate end to end, config errors before any data is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cdanet.cli import COMMANDS, build_parser, main, register_command


def test_train_then_evaluate(processed_dir, tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    code = main([
        "train", "--processed", processed_dir, "--output", out, "--profile", "tiny", "--model", "cdanet",
        "--ablation", "no_cross", "--set", "train.max_epochs=1", "--set", "train.batch_size=256",
        "--set", "train.num_threads=1",
    ])
    printed = capsys.readouterr().out
    assert code == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    auc = metrics["metrics"]["movie"]["auc"]
    assert metrics["ablation"] == "no_cross"
    assert "movie" in printed and f"{auc:.4f}" in printed

    code = main(["evaluate", "--model-dir", os.path.join(out, "model"), "--processed", processed_dir,
                 "--output", str(tmp_path / "eval")])
    assert code == 0
    assert f"{auc:.4f}" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "eval" / "predictions.parquet")


def test_invalid_override_exits_before_loading_data(tmp_path) -> None:
    # The processed directory does not exist: the config error must come first.
    result = subprocess.run(
        [sys.executable, "-m", "cdanet.cli", "train", "--processed", str(tmp_path / "missing"),
         "--output", str(tmp_path / "out"), "--set", "model.alpha=-1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "model.alpha must be >= 0, got -1" in result.stderr
    assert not os.path.exists(tmp_path / "out")


def test_bad_inputs_are_reported_without_traceback(tmp_path, capsys) -> None:
    assert main(["train", "--processed", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "train.nope=1"]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err
    assert main(["train", "--processed", str(tmp_path), "--output", str(tmp_path / "o"), "--target", "ad"]) == 2
    assert "--target 'ad' is not a domain of 'amazon'" in capsys.readouterr().err
    assert main(["evaluate", "--model-dir", str(tmp_path / "none"), "--processed", str(tmp_path)]) == 1
    assert "cdanet evaluate: ModelDirError: no model directory" in capsys.readouterr().err


def test_registry_adds_sub_commands() -> None:
    register_command("hello-test", "say hello", lambda p: p.add_argument("--name"), lambda a: 0)
    try:
        args = build_parser().parse_args(["hello-test", "--name", "x"])
        assert args.command == "hello-test" and args.name == "x"
        assert main(["hello-test"]) == 0
        with pytest.raises(ValueError, match="already registered"):
            register_command("train", "again", lambda p: None, lambda a: 0)
    finally:
        COMMANDS.pop("hello-test")


# ---- every command of README.md and docs/*.md ----------------------------------------------------

import argparse  # noqa: E402
import importlib  # noqa: E402
import json as _json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Commands that set up a machine rather than use the project (they install from the network).
SETUP = ("python -m venv", ".venv/bin/pip", "pip install")


def fenced_commands(path: Path) -> list[tuple[str, str]]:
    """``(section, command)`` for every line of the ```bash blocks of a Markdown file, continuation
    lines joined and comments dropped."""
    out, lang, buf, section = [], None, [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and lang is None:
            section = stripped.lstrip("#").strip()
        if stripped.startswith("```"):
            if lang is None:
                lang, buf = stripped[3:].strip(), []
            else:
                if lang in ("bash", "sh", "shell"):
                    for cmd in re.sub(r"\\\n\s*", " ", "\n".join(buf)).splitlines():
                        words = shlex.split(cmd, comments=True)
                        if words:
                            out.append((section, shlex.join(words)))
                lang = None
        elif lang is not None:
            buf.append(stripped)
    return out


ALL_COMMANDS = [(p.name, s, c) for p in DOCS for s, c in fenced_commands(p)]


class Parsed(Exception):
    """Raised instead of running a command once argparse has accepted its arguments."""


def _parse_only(monkeypatch: pytest.MonkeyPatch) -> None:
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        ns = original(self, args, namespace)
        raise Parsed(ns)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)


def _synopsis(words: list[str]) -> list[str]:
    """A usage synopsis as a command: ``[--overlay base|gpu]`` -> ``--overlay base``, ``{a,b}`` -> ``a``."""
    text = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split("|")[0], shlex.join(words))
    words = shlex.split(text)
    return [w.split(",")[0].lstrip("{") if w.startswith("{") and w.endswith("}") else w.split("|")[0] for w in words]


MODULES = {"pipeline.py": "pipeline", "experiments_pipeline.py": "experiments_pipeline",
           "-m cdanet.studies": "cdanet.studies.cli", "-m cdanet.simulate": "cdanet.simulate.__main__",
           "-m cdanet.serving": "cdanet.serving"}
#: Commands whose documented form needs a running server; the named test runs them as written.
RUN_ELSEWHERE = {"curl": "tests/test_serving.py (mlflow models serve, then the README's curl)"}


@pytest.mark.parametrize("doc, section, command", ALL_COMMANDS, ids=[f"{d}:{c[:60]}" for d, _, c in ALL_COMMANDS])
def test_every_documented_command_parses(doc, section, command, monkeypatch, capsys):
    """Each command of the README and docs is accepted by the CLI it names (argparse parses it, nothing
    runs); external tools: the file, target or sub-command it names exists."""
    words = _synopsis(shlex.split(command))
    if ">" in words:  # a redirection of the output
        words = words[:words.index(">")]
    if command.startswith(SETUP) or "=" in words[0] or words[0] == "export":  # installation, or a shell variable
        return
    if words[0] in RUN_ELSEWHERE:
        return
    if words[0] == "make":
        assert re.search(rf"^{words[1]}:", (REPO / "Makefile").read_text(), re.M), command
        return
    if words[:2] == ["docker", "build"]:
        assert (REPO / words[words.index("-f") + 1]).is_file() and words[-1] == ".", command
        return
    if words[0] in ("kubectl", "kfp", "mlflow"):
        verbs, rest = [], iter(words[1:])
        for w in rest:
            if w in ("-n", "--namespace", "-o", "--context", "-f", "--endpoint", "-e"):
                next(rest, None)
            elif not w.startswith("-"):
                verbs.append(w)
        if words[0] == "kfp" and verbs[0] == "run":
            # `kfp run ... --help` needs a server: test_readme_cluster_steps_run_as_written runs it.
            assert command in _cluster_commands(), command
            return
        exe = shutil.which(words[0], path=os.path.dirname(sys.executable)) or shutil.which(words[0])
        proc = subprocess.run([exe, *verbs[:2 if words[0] == "kfp" else 1], "--help"], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, (command, proc.stderr[-500:])
        return
    if words[0] == "cdanet":
        build_parser().parse_args(words[1:])
        return
    if words[0] == "bash":  # a shell script of the repo: it exists and bash parses it
        script = REPO / words[1]
        assert script.is_file(), command
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, command
        return
    if words[:3] == ["python", "-m", "torch.distributed.run"]:  # torchrun launching the project's CLI
        module = words.index("-m", 3) + 1
        assert words[module] == "cdanet.cli", command
        build_parser().parse_args(words[module + 1:])
        return
    if words[:3] == ["python", "-m", "beam_jobs.preprocess"]:
        from beam_jobs.preprocess import build_parser as beam_parser

        _, beam_args = beam_parser().parse_known_args(words[3:])
        assert all(a.startswith("--") for a in beam_args), beam_args
        return
    key = words[1] if words[1] != "-m" else " ".join(words[1:3])
    if key.startswith("-m benchmarks."):  # the benchmark scripts: python -m benchmarks.<name>
        MODULES.setdefault(key, key[3:])
    assert key in MODULES, f"{doc} ({section}): no parser known for {command!r}"
    argv = words[2:] if words[1] != "-m" else words[3:]
    _parse_only(monkeypatch)
    with pytest.raises(Parsed):
        importlib.import_module(MODULES[key]).main(argv)
    assert "error" not in capsys.readouterr().err


# ---- the README's cluster steps, as written, against a stand-in KFP API server -------------------


class FakeKfp:
    """The KFP v2beta1 REST endpoints the kfp client uses for a run or a recurring run (the HTTP
    boundary; no cluster runs here). Records each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict) -> None:
                data = _json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                fake.requests.append(("GET", self.path, None))
                run = {"run_id": "run-1", "display_name": "r", "state": "PENDING", "experiment_id": "exp-1",
                       "created_at": "2026-12-03T02:00:00Z"}
                self._send(run if "/runs/" in self.path else {})

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = _json.loads(self.rfile.read(length)) if length else None
                fake.requests.append(("POST", self.path, body))
                path = self.path.split("?")[0]
                if path.endswith("/experiments"):
                    self._send({"experiment_id": "exp-1", "display_name": body["display_name"]})
                elif path.endswith("/recurringruns"):
                    self._send({"recurring_run_id": "rr-1", "display_name": body["display_name"]})
                else:
                    self._send({"run_id": "run-1", "display_name": body.get("display_name"), "state": "PENDING",
                                "experiment_id": "exp-1", "created_at": "2026-12-03T02:00:00Z"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def created(self, kind: str) -> list[dict]:
        return [b for m, p, b in self.requests if m == "POST" and p.split("?")[0].endswith(kind)]


def _cluster_commands() -> list[str]:
    return [c for s, c in fenced_commands(REPO / "README.md") if s == "On a Kubeflow cluster"]


@pytest.mark.slow
def test_readme_cluster_steps_run_as_written(tmp_path, monkeypatch, capsys):
    """The README's cluster block, in order: deploy in --dry-run form (no cluster), compile the
    configured YAML, `kfp run submit` it, `pipeline.py submit` and `schedule`, against FakeKfp.
    Before: the block compiled a default YAML (no PVC, no Secret) over the configured one, and
    `deploy --dry-run` / `deploy --overlay gpu` exited 2."""
    from kfp.cli.cli import cli

    import pipeline as P

    fake = FakeKfp()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # the kfp client keeps a context file there
    commands = _cluster_commands()
    assert commands and any(c.startswith("kfp ") for c in commands)
    ran = []
    for command in commands:
        words = shlex.split(command.replace("http://localhost:8080", fake.url))
        if words[:2] == ["docker", "build"]:
            continue  # no Docker here: test_every_documented_command_parses checks the Dockerfile exists
        if words[:3] == ["python", "pipeline.py", "deploy"]:
            argv = words[2:] + ([] if "--dry-run" in words else ["--dry-run"])
            assert P.main(argv) == 0, command
        elif words[:2] == ["python", "pipeline.py"]:
            assert P.main(words[2:]) == 0, command
        elif words[0] == "kfp":
            result = CliRunner().invoke(cli, words[1:], obj={})
            assert result.exit_code == 0, (command, result.output[-1000:])
        else:
            raise AssertionError(f"unexpected command in the README's cluster block: {command}")
        ran.append(words[:3])
    # `kfp run submit` sent the configured pipeline: PVC mounts, every MLflow key, non-root pods.
    kfp_run, submitted = fake.created("/runs")
    for body in (kfp_run, submitted):
        executors = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        text = _json.dumps(executors)
        for needle in ("cdanet-raw-data", "cdanet-processed-data", "MLFLOW_TRACKING_PASSWORD", "runAsNonRoot"):
            assert needle in text, needle
    assert kfp_run["runtime_config"]["parameters"]["profile"] == "paper"
    assert submitted["service_account"] == "cdanet-pipeline-runner"
    assert submitted["runtime_config"]["parameters"]["raw_uri"] == "/data/raw/amazon"
    (recurring,) = fake.created("/recurringruns")
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert recurring["max_concurrency"] in ("1", 1) and recurring["no_catchup"] is True
    assert recurring["service_account"] == "cdanet-pipeline-runner"
    assert ["kfp", "--endpoint", fake.url] in ran


def test_the_readme_names_tests_that_exist():
    """The README's guarantee tables and lists point at tests by ``path::name`` or
    ``path::Class::name`` (``::name`` = same file as before)."""
    text = (REPO / "README.md").read_text()
    found = 0
    for row in (line for line in text.splitlines() if line.startswith(("|", "-", " ")) and "::" in line):
        path = None
        for ref in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::\w+)+)`", row):
            file, _, names = ref.partition("::")
            path = file or path
            for name in names.split("::"):
                assert path and re.search(rf"^\s*(def|class) {name}\b", (REPO / path).read_text(), re.M), ref
            found += 1
    assert found >= 25


@pytest.mark.parametrize("command", ["train", "tune"])
def test_every_config_error_is_one_line(tmp_path, capsys, command) -> None:
    # Before: "invalid config:" then one indented line per problem.
    argv = [command, "--processed", str(tmp_path), "--output", str(tmp_path / "o"),
            "--set", "model.alpha=-1", "--set", "model.num_experts=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"cdanet {command}: invalid config: model.alpha must be >= 0") and "; K (num_experts)" in err
