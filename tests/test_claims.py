"""core.study.claims: how sure a figure is, and the study's conclusions as verdicts (pure arithmetic, checked by hand)."""

from __future__ import annotations

import math

import pytest

from core.study.claims import (
    HOLDS,
    MISSING,
    NOT_HERE,
    TOO_CLOSE,
    Estimate,
    difference,
    estimate,
    study_claims,
    t975,
    verdict,
)


def test_one_run_on_807_test_images_is_uncertain_by_about_two_points() -> None:
    e = estimate([0.917], 807)
    assert e.n == 1 and e.mean == pytest.approx(0.917)
    assert 0.018 < e.half < 0.021  # the "about ±2 points (95%)"
    assert e.low < 0.917 < e.high


def test_a_perfect_score_on_a_tiny_test_set_is_not_certain() -> None:
    e = estimate([1.0], 9)
    assert e.half > 0.1  # Agresti-Coull: 9 of 9 is far from proof


def test_seeds_add_their_spread_with_students_t() -> None:
    values = [0.90, 0.92, 0.94]
    seeds_only = estimate(values, None)
    sd = math.sqrt(sum((v - 0.92) ** 2 for v in values) / 2)
    assert seeds_only.half == pytest.approx(t975(2) * sd / math.sqrt(3))
    both = estimate(values, 807)
    assert both.half == pytest.approx(math.hypot(seeds_only.half, estimate([0.92], 807).half))
    assert t975(2) == pytest.approx(4.303) and t975(1000) == pytest.approx(1.96, abs=1e-3)


def test_nothing_measured_is_none() -> None:
    assert estimate([], 807) is None


def test_verdicts() -> None:
    assert verdict(Estimate(0.05, 0.02, 1)) == HOLDS
    assert verdict(Estimate(-0.05, 0.02, 1)) == NOT_HERE
    assert verdict(Estimate(0.01, 0.02, 1)) == TOO_CLOSE
    # "keeps the accuracy" with a 2-point margin: 1 point worse, tightly measured, still keeps it
    assert verdict(Estimate(-0.01, 0.005, 1), margin=0.02) == HOLDS
    assert verdict(Estimate(-0.05, 0.01, 1), margin=0.02) == NOT_HERE
    assert verdict(Estimate(-0.02, 0.02, 1), margin=0.02) == TOO_CLOSE


def test_a_difference_adds_the_intervals_in_quadrature() -> None:
    d = difference(Estimate(0.93, 0.03, 3), Estimate(0.89, 0.04, 1))
    assert d.mean == pytest.approx(0.04) and d.half == pytest.approx(0.05) and d.n == 1


def test_study_claims_read_their_rows() -> None:
    fig = {
        "t0-finetune": {"test": estimate([0.943, 0.945, 0.941], 807)},
        "t0-head": {"test": estimate([0.916], 807)},
        "t2-small": {"test": estimate([0.889], 807), "gap": Estimate(0.10, 0.03, 1)},
        "t2-full": {"test": estimate([0.92], 807), "gap": Estimate(0.02, 0.03, 1)},
    }
    claims = {c.key: c for c in study_claims(fig)}
    assert claims["overfit"].verdict == HOLDS and claims["overfit"].diff == pytest.approx(0.08)
    assert claims["finetune"].diff == pytest.approx(0.027) and claims["finetune"].verdict in (HOLDS, TOO_CLOSE)
    assert claims["augment"].verdict == MISSING and claims["augment"].diff is None
    assert "not measured yet" in claims["search"].sentence()
    assert "95% interval" in claims["overfit"].sentence() and "+0.080" in claims["overfit"].sentence()
    assert [c.key for c in study_claims({})] == ["truncate", "overfit", "augment", "regularise", "search", "finetune"]
