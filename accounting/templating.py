"""Jinja2 templates of the documents gpuledger writes (the auditor README, the report page).

The templates live in ``accounting/templates/`` and ship as package data. Code computes every
figure and every sentence's variable part; a template only lays them out, so a layout change
never touches a number. The environment is built on first use (nothing at import time) with
``StrictUndefined``: a name a template uses but the caller did not pass is an error, never an
empty string in a document someone relies on. Whitespace is controlled (``trim_blocks``,
``lstrip_blocks``, the final newline kept) so a document renders to the same bytes each time.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2

from accounting.breaches import label as breach_label
from accounting.figures import hours_text, pct, won_text


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("accounting", "templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # the one precision of accounting.figures: GPU-hours to 2 places, whole won, percent to 1 place
    env.filters.update(hours=hours_text, won=won_text, pct=pct, breach_label=breach_label)
    return env


def render(name: str, **context: Any) -> str:
    """Render ``accounting/templates/<name>`` with ``context``."""
    return environment().get_template(name).render(**context)
