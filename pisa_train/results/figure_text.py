"""Text from data (class names, file names) drawn into figures as it is written.

matplotlib reads text between two ``$`` as maths: a class named ``price $\\foo$`` makes every figure
with that name fail to draw (``ValueError: \\foo``), after pisa-eval ran its whole test loop. Every
function that draws text from data runs under ``literal_text``, which turns that reading off for the
text it creates (matplotlib's ``text.parse_math``; the text objects keep the setting they were made with).
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TypeVar

Drawing = TypeVar("Drawing", bound=Callable)
# matplotlib's warning for a character that no font has, where that character is a control character.
CONTROL_GLYPH_MISSING = r"Glyph \d+ \([\x00-\x1f\x7f-\x9f]\) missing from font"


def literal_text(draw: Drawing) -> Drawing:
    """``draw`` with matplotlib's mathtext off for every text it creates (matplotlib imported only when it runs)."""
    @functools.wraps(draw)
    def drawing_literal_text(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}), warnings.catch_warnings():
            # "Glyph 27 (\x1b) missing from font": the warning would carry the control character to stderr.
            warnings.filterwarnings("ignore", message=CONTROL_GLYPH_MISSING)
            return draw(*args, **kwargs)

    return drawing_literal_text  # type: ignore[return-value]
