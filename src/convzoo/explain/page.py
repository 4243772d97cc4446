"""The explain page: ``explain.html``, a view of :class:`~convzoo.explain.run.Explained`
laid out by the Jinja2 template ``templates/explain.html.j2`` (package data) with
autoescape on, so no class name or file name reaches the page unescaped. The pictures
are the PNG files beside the page, linked by their (generated, plain) names; there are
no scripts and nothing from the network."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ..errors import ConvzooError

if TYPE_CHECKING:
    from .run import Explained

__all__ = ["render_page"]


@functools.cache
def _environment():
    try:
        import jinja2
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConvzooError("the explain page needs jinja2: pip install jinja2") from None
    return jinja2.Environment(
        loader=jinja2.PackageLoader("convzoo.explain", "templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render_page(explained: Explained) -> str:
    """The HTML text of the page."""
    return _environment().get_template("explain.html.j2").render(x=explained)
