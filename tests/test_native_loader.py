"""cdanet.native's loader: never loads a library another user could have written; falls back to torch.

A planted library here is a real shared object whose constructor writes a marker file when it is
loaded, so "not loaded" is observed, not inferred.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cdanet.native as native

CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler here")
OTHER_UID = 65534  # nobody


@pytest.fixture
def fresh_library():
    native.library.cache_clear()
    yield native.library
    native.library.cache_clear()


@pytest.fixture
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    monkeypatch.setenv(native.ENV_CACHE, str(cache))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp))
    return cache, tmp


def plant(path: Path, marker: Path) -> None:
    """A shared object at ``path`` that creates ``marker`` as soon as it is loaded."""
    src = path.parent / "planted.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                   f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    subprocess.run([CC, "-shared", "-fPIC", str(src), "-o", str(path)], check=True, capture_output=True)
    src.unlink()


@needs_cc
def test_built_library_lives_in_a_private_folder_with_its_digest(fresh_library, private_dirs) -> None:
    cache, _ = private_dirs
    lib = fresh_library()
    assert lib is not None and lib.path.parent == cache
    assert cache.stat().st_mode & 0o777 == 0o700
    assert lib.path.stat().st_mode & 0o022 == 0
    assert native._trusted(lib.path) is None


def first_name() -> str:
    """The file name the loader tries first (computed, not built: a library loaded once in this process
    would be found again by ``dlopen`` under its path, and the planted one would never be opened)."""
    return native._candidates(CC, native._SOURCE.read_bytes(), native._cpu_signature().encode())[0][1]


def record_digest(path: Path) -> None:
    native._digest_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest())


@needs_cc
@pytest.mark.parametrize("tamper", ["digest", "mode", "owner", "no-digest"])
def test_a_planted_library_is_not_loaded(fresh_library, private_dirs, tmp_path: Path, tamper: str) -> None:
    if tamper == "owner" and os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    cache, _ = private_dirs
    cache.mkdir(mode=0o700)
    path, marker = cache / first_name(), tmp_path / "planted-code-ran"
    plant(path, marker)
    path.chmod(0o700)
    if tamper == "digest":  # a digest that is not the planted file's
        native._digest_path(path).write_text("0" * 64)
    elif tamper == "mode":  # the right digest, but anyone could have rewritten the file since
        record_digest(path)
        path.chmod(0o777)
    elif tamper == "owner":  # the right digest, but another user's file
        record_digest(path)
        os.chown(path, OTHER_UID, OTHER_UID)
    got = fresh_library()
    assert not marker.exists(), "the planted library's code ran"
    # ... and the kernels were rebuilt in its place, from our source
    assert got is not None and got.path == path and native._trusted(path) is None
    assert os.stat(path).st_uid == os.getuid()


@needs_cc
def test_a_cache_folder_of_another_user_is_skipped(fresh_library, private_dirs, tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    cache, tmp = private_dirs
    cache.mkdir(mode=0o700)
    path, marker = cache / first_name(), tmp_path / "planted-code-ran"
    plant(path, marker)
    path.chmod(0o700)
    record_digest(path)
    for p in (cache, path, native._digest_path(path)):
        os.chown(p, OTHER_UID, OTHER_UID)
    got = fresh_library()
    assert not marker.exists(), "the planted library's code ran"
    assert got is not None and got.path.parent == tmp / f"cdanet-native-{os.getuid()}"


@needs_cc
def test_a_symlinked_cache_folder_is_skipped(fresh_library, private_dirs, tmp_path: Path) -> None:
    cache, tmp = private_dirs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache.symlink_to(elsewhere)
    got = fresh_library()
    assert got is not None and got.path.parent == tmp / f"cdanet-native-{os.getuid()}"


def test_no_writable_folder_falls_back_to_torch(fresh_library, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(native.ENV_CACHE, str(blocker / "cache"))  # its parent is a file: cannot be created
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(blocker / "tmp"))
    with caplog.at_level("WARNING", logger="cdanet.native"):
        assert fresh_library() is None
    assert "no private folder" in caplog.text and "uses torch ops" in caplog.text
    rows, values = native.coalesce_grad(torch.tensor([[3, 1], [3, 0]]), torch.ones(2, 2), None, True, 5)
    assert rows.tolist() == [0, 1, 3] and values.tolist() == [[1, 1], [1, 1], [2, 2]]


def test_no_usable_temporary_folder_falls_back_to_torch(fresh_library, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    def no_tmp() -> str:  # what tempfile.gettempdir() raises when no candidate folder is usable
        raise FileNotFoundError("No usable temporary directory found in ['/tmp']")

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(native.ENV_CACHE, str(blocker / "cache"))
    monkeypatch.setattr(native.tempfile, "gettempdir", no_tmp)
    assert fresh_library() is None


@needs_cc
def test_processes_starting_together_all_get_the_kernels(tmp_path: Path) -> None:
    # e.g. the ranks of a DDP job on a fresh node: one builds, the others wait and load the same file
    env = {**os.environ, native.ENV_CACHE: str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).parents[1])}
    code = "from cdanet.native import library; lib = library(); assert lib is not None; print(lib.path)"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1


# A library built ahead of time (the image's build stage): the runtime needs no compiler.

@needs_cc
def test_a_prebuilt_library_is_loaded_without_a_compiler(fresh_library, tmp_path, monkeypatch) -> None:
    built = native.build(tmp_path / "prebuilt")
    assert built.name == native.PREBUILT_NAME and "-march=native" not in native.PORTABLE_FLAGS
    monkeypatch.setenv(native.ENV_PREBUILT, str(built))
    monkeypatch.setenv("CC", "/nonexistent/cc")  # the compile path would find nothing
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_cpu_flags", frozenset)  # a CPU without the x86-64-v3 features
    lib = fresh_library()
    assert lib is not None and lib.path == built and not (tmp_path / "cache").exists()
    rows, values = native.coalesce_grad(torch.tensor([[3, 1], [3, 0]]), torch.ones(2, 2), None, True, 5)
    assert rows.tolist() == [0, 1, 3] and values.tolist() == [[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]]


@needs_cc
@pytest.mark.parametrize("flaw, why", [
    ("file_mode", "writable by group or others"),
    ("dir_mode", "writable by group or others"),
    ("bytes", "SHA-256 differs"),
    ("source", "built from another native.c"),
    ("no_digest", "cannot stat"),
])
def test_a_prebuilt_library_that_fails_a_check_is_never_loaded(fresh_library, tmp_path, monkeypatch, caplog,
                                                               flaw, why) -> None:
    built = native.build(tmp_path / "prebuilt")
    marker = tmp_path / "ran"
    digest = native._digest_path(built)
    lib_digest, src_digest = digest.read_text().split()
    if flaw == "file_mode":
        plant(built, marker)
        digest.write_text(f"{hashlib.sha256(built.read_bytes()).hexdigest()} {src_digest}\n")
        os.chmod(built, 0o777)
    elif flaw == "dir_mode":
        plant(built, marker)
        digest.write_text(f"{hashlib.sha256(built.read_bytes()).hexdigest()} {src_digest}\n")
        os.chmod(built.parent, 0o777)
    elif flaw == "bytes":
        plant(built, marker)  # replaced after the build: the recorded digest no longer matches
    elif flaw == "source":
        digest.write_text(f"{lib_digest} {'0' * 64}\n")
    else:
        digest.unlink()
    monkeypatch.setenv(native.ENV_PREBUILT, str(built))
    monkeypatch.setattr(native, "_cpu_flags", frozenset)  # the portable build only (variants: the next test)
    monkeypatch.setenv(native.ENV_SWITCH, "1")
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level("WARNING", logger="cdanet.native"):
        assert fresh_library() is None  # refused, and no compiler to build one: torch ops
    assert why in caplog.text and native.ENV_PREBUILT in caplog.text
    assert not marker.exists()  # the planted library's code never ran


def test_build_without_a_compiler_says_so(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert native.main(["build", str(tmp_path / "out")]) == 1
    assert "cdanet.native: error: " in capsys.readouterr().err


@needs_cc
def test_the_prebuilt_variant_that_the_cpu_can_run_is_preferred(fresh_library, tmp_path, monkeypatch) -> None:
    built = native.build(tmp_path / "prebuilt")
    name, _, needs = native.PREBUILT_VARIANTS[0]
    v3 = native.variant_path(built, name)
    if not v3.exists():
        pytest.skip(f"this compiler cannot build {name}")
    assert native._trusted_prebuilt(v3) is None
    monkeypatch.setenv(native.ENV_PREBUILT, str(built))
    monkeypatch.setattr(native, "_cpu_flags", lambda: needs | {"sse2"})
    assert fresh_library().path == v3
    native.library.cache_clear()
    monkeypatch.setattr(native, "_cpu_flags", lambda: needs - {"avx2"})  # one feature missing: the portable one
    assert fresh_library().path == built
    native.library.cache_clear()
    os.chmod(v3, 0o777)  # a variant that fails a check is skipped, never loaded
    monkeypatch.setattr(native, "_cpu_flags", lambda: needs)
    assert fresh_library().path == built


@needs_cc
def test_the_build_command_of_the_docs(tmp_path) -> None:
    # docs/architecture.md and the Dockerfile: `python -m cdanet.native build DIR`
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "cdanet.native", "build", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    built = tmp_path / "out" / native.PREBUILT_NAME
    assert f"{native.ENV_PREBUILT}={built}" in done.stdout and native._trusted_prebuilt(built) is None
