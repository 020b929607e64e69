"""Preset pickers with one custom value (intensities, bio strengths) fed from a link's list.

A link lists numbers (``doses=0,0.1,0.3,0.6``); the page shows them as preset names plus one
custom slider. :func:`split` keeps every number it can (the presets, and one custom value) and
warns about each it cannot, so a link never loses a value silently.
"""

from __future__ import annotations

from psilonet.app import links


def label(presets: dict[str, float]):
    """A format function naming a preset with its number: ``micro-dose (0.1)``."""
    return lambda name: f"{name} ({presets[name]:g})"


def split(name: str, values: list[float], presets: dict[str, float], custom: float | None) -> tuple[list[str], float]:
    """(the preset names among ``values``, the custom value) for link key ``name``.

    The custom value is ``custom`` (the link's own custom key) or else the first of ``values``
    that is no preset; any further non-preset value is named in one warning and dropped."""
    by_value = {v: k for k, v in presets.items()}
    chosen = [by_value[v] for v in values if v in by_value]
    extra = list(dict.fromkeys(v for v in values if v not in by_value))
    kept = custom if custom is not None else (extra[0] if extra else 0.0)
    dropped = [v for v in extra if v != kept]
    if dropped:
        links.warn(f"The link's `{name}` has more custom values than the page's one custom slider: keeping "
                   f"{kept:g}, dropping {', '.join(f'{v:g}' for v in dropped)}.")
    return list(dict.fromkeys(chosen)), float(kept)
