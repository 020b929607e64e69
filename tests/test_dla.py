"""Direct logit attribution (psilonet.analysis.dla) and the causal charts (psilonet.app.cause_charts)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from psilonet.analysis import dla
from psilonet.app import cause_charts
from psilonet.model.skip import SkipConfig, SkipModel
from tests.conftest import make_tiny_model
from tests.test_skip import randomise

TOKENS = list(np.random.default_rng(0).integers(0, 97, 12))


@pytest.mark.parametrize("blend", ["convex", "additive"])
def test_parts_sum_to_the_predicted_logit(blend):
    model = randomise(SkipModel.from_base(make_tiny_model(), SkipConfig(distances=[1, 2], skip_start=1, gates=True,
                                                                        alpha=0.5, blend=blend)))
    predicted, parts, logit = dla.attribution(model, TOKENS)
    assert predicted.shape == (12,) and set(p for p, _ in parts) == {"embed", "attn", "skip", "mlp"}
    assert {l for p, l in parts if p == "skip"} == set(model.skip_layers)
    np.testing.assert_allclose(sum(parts.values()), logit, atol=1e-4)
    assert all(np.abs(v).max() > 0 for k, v in parts.items() if k[0] == "skip")


def test_an_untrained_additive_adapter_has_no_direct_skip_effect_and_the_base_no_skip_rows():
    base = make_tiny_model(seed=2)
    fresh = SkipModel.from_base(base, SkipConfig(distances=[2], skip_start=2, blend="additive"))
    _, parts, logit = dla.attribution(fresh, TOKENS)
    assert all(np.all(v == 0) for k, v in parts.items() if k[0] == "skip")  # o-projection starts at zero
    _, plain, plain_logit = dla.attribution(base, TOKENS)
    assert {p for p, _ in plain} == {"embed", "attn", "mlp"}
    np.testing.assert_allclose(plain_logit, logit, atol=1e-5)
    np.testing.assert_allclose(sum(plain.values()), plain_logit, atol=1e-4)


def ablation_table() -> pd.DataFrame:
    rows = [("none off", "reference", None, None, None, 0.0, 0.0, 0.0, None, None),
            ("block 3", "block", 3, None, None, 0.2, 0.1, 0.3, 0.5, 1)]
    rows += [(f"block {l} tap d={d}", "tap", l, d, None, 0.01 * l * d, 0.0, 0.02 * l * d, 0.3, 2) for l in (3, 4)
             for d in (1, 2)]
    rows += [(f"block {l} head {h}", "head", l, None, h, -0.01 * h, -0.02, 0.0, 0.4 + 0.1 * h, 3) for l in (3, 4)
             for h in range(3)]
    frame = pd.DataFrame(rows, columns=list(cause_charts.ABLATION_COLUMNS))
    for col in ("layer", "distance", "head", "rank"):
        frame[col] = frame[col].astype("Int64")
    return frame


def test_ablation_heatmaps_carry_the_ci_and_a_symmetric_scale():
    table = ablation_table()
    taps = cause_charts.ablation_heatmap(table, "tap").to_dict()
    rows = next(iter(taps["datasets"].values()))
    assert len(rows) == 4 and {r["distance"] for r in rows} == {1, 2}
    assert {t["field"] for t in taps["encoding"]["tooltip"]} >= {"ci_low", "ci_high", "learned", "rank"}
    assert taps["encoding"]["color"]["scale"]["domain"] == [pytest.approx(-0.08), pytest.approx(0.08)]
    heads = cause_charts.ablation_heatmap(table, "head").to_dict()
    assert heads["encoding"]["x"]["field"] == "head" and len(next(iter(heads["datasets"].values()))) == 6
    with pytest.raises(ValueError, match="kind must be tap or head"):
        cause_charts.ablation_heatmap(table, "block")
    scatter = json.dumps(cause_charts.learned_vs_effect(table).to_dict())
    assert "large learned weights" in scatter and "none off" not in scatter
    with pytest.raises(ValueError, match="missing column"):
        cause_charts.ablation_heatmap(table.drop(columns="ci_low"), "tap")


def test_patching_and_dla_charts():
    prof = pd.DataFrame({"layer": range(4), "restored": [0.0, 0.2, 0.9, 1.0], "injected": [0.1, 0.5, 0.2, 0.0]})
    spec = cause_charts.patching_profile(prof).to_dict()
    assert len(next(iter(spec["datasets"].values()))) == 8
    frame = dla.attribution_frame(make_tiny_model(), _Tok(), TOKENS)
    assert set(frame.part) == {"embed", "attn", "mlp"} and len(frame) == 12 * (1 + 2 * 6)
    spec = cause_charts.dla_heatmap(frame, "mlp").to_dict()
    assert len(next(iter(spec["datasets"].values()))) == 12 * 6
    assert {t["field"] for t in spec["encoding"]["tooltip"]} >= {"token", "predicted", "value"}


class _Tok:
    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)
