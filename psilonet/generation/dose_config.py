"""The dose config: one dosed generation's settings and the batch rows they make.

Shared by ``jobs.dose`` and the app's dose page, and stored with every dose run. A
configuration's batch rows are every combination of its intensities and bio strengths
(:func:`combine_rows`); :func:`row_label` names a row the same way on every page.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from psilonet import config
from psilonet.config import option
from psilonet.generation import bio
from psilonet.generation.perturb import MECHANISMS, PRESETS, DoseSpec
from psilonet.generation.sampling import SamplingConfig

MAX_NEW_TOKENS = 512
MAX_SEED = config.MAX_SEED


@dataclass
class DoseConfig:
    """One dosed generation's settings, shared by ``jobs.dose`` and the app (and stored with the run)."""

    intensities: list[float] = option(default_factory=lambda: list(PRESETS.values()), min=0.0, max=1.0,
                                      help="each in [0, 1]; presets: "
                                           + ", ".join(f"{k} {v}" for k, v in PRESETS.items()))
    seeds: list[int] = config.seed_option(default_factory=lambda: [0],
                              help="one continuation per seed (same seed: same sampling and noise)")
    mechanisms: list[str] = option(default_factory=lambda: list(MECHANISMS), choices=MECHANISMS,
                                   help="perturbations applied")
    max_tokens: int = option(48, min=1, max=MAX_NEW_TOKENS, help="new tokens per continuation")
    temperature: float = option(0.0, min=0.0, max=100.0, help="0 = greedy")
    top_p: float = option(1.0, above=0.0, max=1.0, help="nucleus sampling mass")
    chat: bool = option(True, flag=False)
    # Bio-inspired interventions beside the doses: every row combines one intensity with one of each.
    fatigue: list[float] = option(default_factory=lambda: [0.0], min=0.0, max=bio.MAX_STRENGTH,
                                  help="synaptic fatigue strengths (0 = off); presets: "
                                       + ", ".join(f"{k} {v:g}" for k, v in bio.PRESETS.items()))
    hebbian: list[float] = option(default_factory=lambda: [0.0], min=0.0, max=bio.MAX_STRENGTH,
                                  help="Hebbian fast-weight strengths (0 = off); same presets")

    def validate(self) -> "DoseConfig":
        for name in ("intensities", "seeds", "mechanisms", "fatigue", "hebbian"):
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                raise config.ConfigError(f"{name}: give at least one value")
        config.check(self)
        return self

    def sampling(self, seed: int) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=seed)

    def spec(self) -> DoseSpec:
        return DoseSpec.only(*self.mechanisms)

    def rows(self) -> tuple[list[float], list[float], list[float]]:
        """(intensities, fatigue, hebbian) of the batch rows, see :func:`combine_rows`."""
        return combine_rows(self.intensities, self.fatigue, self.hebbian)

    def to_dict(self) -> dict:
        return {**asdict(self), "mechanisms": self.spec().enabled()}


def combine_rows(intensities: list[float], fatigue: list[float], hebbian: list[float]):
    """Per-row (intensities, fatigue, hebbian): every combination, intensities varying slowest."""
    combos = [(i, f, h) for i in intensities for f in fatigue for h in hebbian]
    return [c[0] for c in combos], [c[1] for c in combos], [c[2] for c in combos]


def row_label(intensity: float, fatigue: float = 0.0, hebbian: float = 0.0, steering: float = 0.0) -> str:
    """``intensity 0.2``, with ``+ fatigue 0.5`` / ``+ hebbian 1`` / ``+ steering 4`` where those are on."""
    parts = [f"intensity {intensity:g}"]
    parts += [f"fatigue {fatigue:g}"] if fatigue else []
    parts += [f"hebbian {hebbian:g}"] if hebbian else []
    parts += [f"steering {steering:g}"] if steering else []
    return " + ".join(parts)
