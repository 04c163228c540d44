"""What the case report (``core.reports``) needs from the view layer: the words for the map.

The report is built in core; how the explanation map is named and explained comes from
``ui.explain_view``, which knows how coarse the map is for the model that served it (it learns
the grid when the map is computed). The page and the report thus word a map the same way.
"""

from __future__ import annotations

from core.reports import MapWords
from ui import explain_view


def map_words(pred) -> MapWords:
    """The method's name (with its layer) and the sentence about ``pred``'s map, as the page
    shows them; the report leaves both out for a rejected image or one without a map."""
    name = explain_view.method_label(getattr(pred, "heatmap_method", None), getattr(pred, "heatmap_layer", None))
    sentence = explain_view.caption(pred) if getattr(pred, "heatmap", None) is not None else ""
    return MapWords(name=name, sentence=sentence)


__all__ = ["map_words"]
