"""Issue 14 items 4-5: exact McNemar, paired bootstrap, latency rounds, flips and contact sheets."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edgepack.report import flips, stats
from edgepack.timing import measure

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_mcnemar_exact_by_hand():
    # 1 vs 9 discordant: P(X <= 1) for Binomial(10, 1/2) = (1 + 10) / 1024; two-sided doubles it.
    assert stats.mcnemar_exact(1, 9) == 22 / 1024 == stats.mcnemar_exact(9, 1)
    assert stats.mcnemar_exact(0, 0) == 1.0 and stats.mcnemar_exact(5, 5) == 1.0
    assert stats.mcnemar_exact(0, 6) == 2 / 64
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)


def test_mcnemar_matches_scipy():
    binomtest = pytest.importorskip("scipy.stats").binomtest  # scipy comes with scikit-learn
    for a, b in ((3, 17), (40, 61), (120, 95), (0, 1), (250, 250), (1200, 1290)):
        assert stats.mcnemar_exact(a, b) == pytest.approx(binomtest(a, a + b, 0.5).pvalue, rel=1e-9)


def _pair(n_both, n_a, n_b, n_none):
    a = np.array([1] * n_both + [1] * n_a + [0] * n_b + [0] * n_none, bool)
    b = np.array([1] * n_both + [0] * n_a + [1] * n_b + [0] * n_none, bool)
    return a, b


def test_bootstrap_interval_contains_the_difference_and_is_seeded():
    a, b = _pair(6000, 400, 200, 3400)  # true difference +2 points on these images
    lo, hi = stats.paired_bootstrap(a, b)
    assert lo < 2.0 < hi and lo > 0  # beyond noise: 200 more right of 600 discordant
    se = 100 * np.sqrt((0.04 + 0.02 - 0.02**2) / 10_000)  # paired difference's standard error
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert stats.paired_bootstrap(a, b) == (lo, hi)  # same seed, same interval
    assert stats.paired_bootstrap(a, b, seed=1) != (lo, hi)


def test_compare_predictions_within_noise():
    labels = np.zeros(1000, int)
    a, b = _pair(700, 12, 10, 278)
    got = stats.compare_predictions(np.where(a, 0, 1), np.where(b, 0, 1), labels)
    assert got["delta_pts"] == pytest.approx(0.2) and got["only_this_right"] == 12
    assert got["within_noise"] and got["p_value"] > 0.5 and got["ci_pts"][0] < 0 < got["ci_pts"][1]
    a, b = _pair(700, 60, 10, 230)
    assert not stats.compare_predictions(np.where(a, 0, 1), np.where(b, 0, 1), labels)["within_noise"]


def test_latency_rounds_use_the_same_calls():
    calls = []
    lat = measure(lambda: calls.append(1), runs=50, warmup=3, rounds=5)
    assert len(calls) == 53 and len(lat.round_p50_ms) == 5  # rounds are slices: no extra calls
    got = stats.latency_interval(lat.as_dict())
    assert got["low_ms"] <= got["p50_ms"] <= got["high_ms"] and got["rounds"] == 5
    assert stats.latency_interval(measure(lambda: None, runs=5, warmup=0).as_dict()) is None
    assert stats.latency_within_noise({"low_ms": 1, "high_ms": 2}, {"low_ms": 1.9, "high_ms": 3})
    assert not stats.latency_within_noise({"low_ms": 1, "high_ms": 2}, {"low_ms": 2.1, "high_ms": 3})


def test_flip_summary_counts_pairs_and_per_class_change():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    base = np.array([0, 0, 1, 2, 2, 2, 3, 0])
    pred = np.array([0, 3, 1, 1, 3, 3, 3, 0])
    got = flips.flip_summary(pred, base, labels, NAMES[:4])
    assert got["changed"] == 4
    assert got["pairs"] == [{"from": "bird", "to": "cat", "count": 2},
                            {"from": "airplane", "to": "cat", "count": 1},
                            {"from": "bird", "to": "automobile", "count": 1}]
    assert got["per_class_delta_pts"] == {"airplane": -50.0, "automobile": 50.0, "bird": -100.0, "cat": 0.0}


def test_contact_sheet_most_confident_flips_png():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels, base = np.arange(40) % 10, np.arange(40) % 10
    pred = base.copy()
    pred[::2] = (pred[::2] + 1) % 10  # 20 flips
    conf = np.linspace(0.1, 0.9, 40).astype(np.float32)
    idx = flips.most_confident_flips(pred, conf, base)
    assert len(idx) == flips.SHEET_IMAGES and idx[0] == 38 and all(pred[idx] != base[idx])
    png = flips.contact_sheet(images, labels, pred, conf, base, NAMES, "test")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width > 200 and len(png) < 150_000
    assert flips.contact_sheet(images, labels, base, conf, base, NAMES, "none") is None
    assert flips.sheet_name("prune-0.8/tflite-int8") == "flips/prune-0.8_tflite-int8.png"
