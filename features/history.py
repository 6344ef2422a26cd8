"""Cutting a history at a moment, and telling its events apart cheaply."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.columns import Columns as C
from features.columns import EventType as E


def until(events: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """Events at or before ``now``; the frame itself (no copy) when none is later."""
    later = events[C.timestamp] > now
    return events[~later] if later.any() else events


def kind_masks(kinds: pd.Series) -> dict[str, np.ndarray]:
    """A boolean mask per event type, through integer codes (no per-row Python strings)."""
    codes, names = pd.factorize(kinds)
    masks = {name: codes == i for i, name in enumerate(names)}
    return {kind: masks.get(kind, np.zeros(len(kinds), dtype=bool)) for kind in E.all}
