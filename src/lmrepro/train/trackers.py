"""Which of the configured accelerate trackers (``train.trackers``) can run here."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable


def missing_trackers(names: Iterable[str]) -> list[str]:
    """The trackers of ``names`` whose package is not installed here (each tracker's package has its name)."""
    return [t for t in names if importlib.util.find_spec(t) is None]
