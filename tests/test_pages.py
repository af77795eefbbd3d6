"""HTML pages from the package's Jinja2 templates: run data is escaped, the templates ship with the package."""

from __future__ import annotations

import base64
import fnmatch
from pathlib import Path

import jinja2
import numpy as np
import pytest

from cdanet import pages
from cdanet.evaluation import calibration
from cdanet.figures import write_reliability
from cdanet.studies.report import png_html

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "cdanet" / "templates"
MARKUP = "<script>alert('x')</script> & co"


def test_the_reliability_page_escapes_model_labels_and_formats_the_bins(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 200), rng.random(200)
    cals = {"movie": {MARKUP: calibration("movie", labels, scores, 0.3, n_bins=4)}}
    write_reliability(cals, str(tmp_path / "r.png"), str(tmp_path / "r.html"))

    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co" in page
    cal = cals["movie"][MARKUP]
    assert f"<td>{cal.logloss:.4f}</td>" in page
    assert page.count("<tr><td>") == 1 + 4  # one summary row, then the four bins
    png = base64.b64encode((tmp_path / "r.png").read_bytes()).decode()
    assert f"src='data:image/png;base64,{png}'" in page  # the page embeds the PNG it wrote


def test_the_studies_page_escapes_its_title_notes_and_file_names(tmp_path: Path) -> None:
    png = tmp_path / "fig<1>.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    page = png_html([str(png)], MARKUP, notes=[MARKUP])
    assert "<script>" not in page
    assert page.count("&lt;script&gt;") == 3  # <title>, <h2> and the note
    assert "alt='fig&lt;1&gt;.png'" in page and base64.b64encode(png.read_bytes()).decode() in page


def test_a_template_variable_left_unset_raises() -> None:
    with pytest.raises(jinja2.UndefinedError, match="figures"):
        pages.render("studies_figures.html.j2", title="t", notes=[])


def test_every_template_is_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cdanet"]
    files = sorted(str(p.relative_to(REPO / "cdanet")) for p in TEMPLATES.rglob("*") if p.is_file())
    assert "templates/validation.html.j2" in files
    assert [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)] == []
