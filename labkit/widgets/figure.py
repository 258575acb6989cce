"""The live chart's figure widget: plotly's ``FigureWidget`` whose views let go when removed.

plotly's views listen on the widget model and never stop listening: once a view is
removed from the page (its output cleared, or its cell run again while a run still
draws), every later update redraws into the purged element and the browser logs
"Error setting state". :class:`LiveFigure` is the same widget with its front-end
module wrapped (``figure.js``) so that each view's listeners go with the view.

The wrapper is appended to plotly's own module, whose closing ``export {...}``
names its default export; if a future plotly's module does not end that way,
:class:`LiveFigure` is plotly's widget unchanged (:data:`WRAPPED` is then False).
"""

from __future__ import annotations

import re
from pathlib import Path

import plotly.graph_objects as go

__all__ = ("PLOTLY_MODULE", "WRAPPED", "LiveFigure", "wrap_module")

_WRAPPER = Path(__file__).with_name("figure.js")
_EXPORTS = re.compile(r"export\s*\{([^{}]*)\}\s*;?")
_PLACEHOLDER = "LABKIT_PLOTLY_WIDGET"


def wrap_module(module: str, wrapper: str) -> str | None:
    """``module`` with its default export replaced by ``wrapper``'s, or None.

    ``wrapper`` refers to the module's default export as ``LABKIT_PLOTLY_WIDGET``
    and is put right after the module's closing ``export {...}`` clause (what
    bundlers write), which loses its default; what follows it (license comments)
    is kept. A module without such a clause naming a default is not wrapped.
    """
    clauses = list(_EXPORTS.finditer(module))
    found = clauses[-1] if clauses else None
    if found is None or not _only_comments(module[found.end() :]):
        return None
    kept: list[str] = []
    default = None
    for entry in (part.strip() for part in found.group(1).split(",")):
        local, _, exported = entry.partition(" as ")
        if exported.strip() == "default":
            default = local.strip()
        elif entry:
            kept.append(entry)
    if default is None or not re.fullmatch(r"[\w$]+", default):
        return None
    exports = "export{" + ",".join(kept) + "};\n"
    wrapped = wrapper.replace(_PLACEHOLDER, default)
    return module[: found.start()] + exports + wrapped + module[found.end() :]


def _only_comments(tail: str) -> bool:
    """Whether ``tail`` holds nothing but JavaScript comments, blanks and semicolons."""
    return not re.sub(r"/\*.*?\*/|//[^\n]*", "", tail, flags=re.DOTALL).strip(" \t\r\n;")


# Without anywidget, plotly's FigureWidget is a stand-in with no module, whose
# constructor says to install anywidget: LiveFigure then does the same.
PLOTLY_MODULE = str(getattr(go.FigureWidget, "_esm", ""))
"""plotly's own front-end module for ``FigureWidget`` (empty without anywidget)."""
_WRAPPED_MODULE = wrap_module(PLOTLY_MODULE, _WRAPPER.read_text(encoding="utf-8"))
WRAPPED = _WRAPPED_MODULE is not None
"""Whether :class:`LiveFigure`'s views let go when removed (plotly's module was wrapped)."""


class LiveFigure(go.FigureWidget):  # type: ignore[misc]
    """plotly's ``FigureWidget``, whose views stop listening once removed from the page."""

    _esm = _WRAPPED_MODULE or PLOTLY_MODULE
