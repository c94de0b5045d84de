"""How many examples the property-based tests draw.

``TICKWIRE_HYPOTHESIS_SCALE`` scales every ``max_examples`` (default 1). ``./dev test`` sets it
to 0.25 for the second pass on the debug build: that pass is there for the bounds and
initialisation checks compiled into it, which an out-of-range index trips on any example, and
at -O0 the full budget would double the default run's time.
"""

import os

SCALE = float(os.environ.get("TICKWIRE_HYPOTHESIS_SCALE", "1"))


def examples(n: int) -> int:
    """``n`` scaled by ``TICKWIRE_HYPOTHESIS_SCALE`` (at least 10)."""
    return max(10, round(n * SCALE))
