"""cdanet.atomic: a reader sees the old file or the new one, and a failed write leaves no temp file."""

from __future__ import annotations

import json
import os

import pytest

from cdanet.atomic import replacing, write_json, write_text


def test_write_text_and_json_replace_the_target(tmp_path) -> None:
    path = str(tmp_path / "out.json")
    write_text(path, "old")
    write_json(path, {"b": 1, "a": 2})
    assert json.loads(open(path).read()) == {"a": 2, "b": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path) -> None:
    path = str(tmp_path / "predictions.parquet")
    write_text(path, "old")
    with pytest.raises(RuntimeError, match="disk full"), replacing(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half of the new")
        raise RuntimeError("disk full")
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["predictions.parquet"]
