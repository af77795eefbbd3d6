"""Renders the package's HTML pages from their Jinja2 templates (``cdanet/templates/``, package data).

Every value a template prints is escaped (autoescape is on for every template), so run data such as
field names, expectation messages or file paths can never inject markup. An undefined variable
raises instead of rendering as an empty string.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

__all__ = ["render"]


@functools.cache
def _environment() -> jinja2.Environment:
    # Imported here: the modules that render pages (figures, studies) promise a cheap import.
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("cdanet", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    """The page ``template`` (a file name under ``cdanet/templates/``) rendered with ``context``."""
    return _environment().get_template(template).render(**context)
