"""The HTML page of an ablation (``convzoo ablate``): its table and its loss curves,
one self-contained file rendered by the Jinja2 template ``templates/ablation.html.j2``
(autoescape on, as the report)."""

from __future__ import annotations

from typing import Any

from .html import template_environment

__all__ = ["render_ablation_page"]


def render_ablation_page(
    *, title: str, command: str, why: str, rows: list[dict[str, Any]], chart: str
) -> str:
    """The page: ``rows`` as :meth:`convzoo.ablate.VariantRow.to_dict` gives them plus
    ``table_row`` (the Markdown table's cells), ``chart`` a ``data:`` URI."""
    from markupsafe import Markup

    env = template_environment()
    css, _, _ = env.loader.get_source(env, "report.css")
    return env.get_template("ablation.html.j2").render(
        title=title, command=command, why=why, rows=rows, chart=chart, css=Markup(css)
    )
