"""TriAdaptLoRA's pure growth schedule (Eq. 12-14, readings A1-A4, A9-A11) against hand-computed
schedules for Table V settings.

Common to RTE and MRPC (Table V): r_ref 8, Δr 4, t0 = interval = 100, M = 72 modules, r_init 1,
so the budget is R = 8·72 - 1·72 = 504 and the total rank starts at 72.
RTE: 2490 train rows -> ceil(2490/32) = 78 steps/epoch x 50 epochs = T = 3900 (T - t0 = 3800).
MRPC: 3668 rows -> 115 x 30 = T = 3450 (T - t0 = 3350).
Growth steps are t = 200, 300, ... (t > t0, t % 100 == 0, A1), α(t) = (t - 100)/(T - 100).
"""

import math

import pytest

from adarank.methods.triadapt.schedule import (
    first_growth_step,
    initial_budget,
    is_growth_step,
    num_to_grow,
    plan,
    progress,
    raw_k,
)

M, R_REF, R_INIT, DR, T0, DT = 72, 8, 1, 4, 100, 100


def run_plan(T, mode, rounding="ceil", top_h=None, strict=False, delta_r=DR, t0=T0, dt=DT):
    return plan(T, t0, dt, M, R_REF, R_INIT, delta_r, mode, rounding, top_h, strict)


def test_budget_and_trigger():
    assert initial_budget(8, 1, 72) == 504  # Eq. 12 at t = 1
    assert first_growth_step(100, 100) == 200
    assert first_growth_step(150, 100) == 200
    assert first_growth_step(0, 50) == 50
    assert not is_growth_step(100, 100, 100, 504)  # t must exceed t0
    assert is_growth_step(200, 100, 100, 504)
    assert not is_growth_step(250, 100, 100, 504)  # not a multiple of the interval
    assert not is_growth_step(300, 100, 100, 0)  # budget spent
    assert not is_growth_step(300, 100, 100, -4)  # budget overshot
    assert progress(200, 100, 3900) == pytest.approx(1 / 38)


# --- RTE, T = 3900 -----------------------------------------------------------------------------
# linear/ceil by hand: k = ceil(R (t-100)/3800)
#   t=200: ceil(504/38 = 13.26) = 14, R = 504-56 = 448;   t=300: ceil(448·2/38 = 23.58) = 24, R = 352
#   t=400: ceil(352·3/38 = 27.79) = 28, R = 240;           t=500: ceil(240·4/38 = 25.26) = 26, R = 136
#   t=600: ceil(136·5/38 = 17.89) = 18, R = 64;            t=700: ceil(64·6/38 = 10.11) = 11, R = 20
#   t=800: ceil(20·7/38 = 3.68) = 4, R = 4;                t=900: ceil(4·8/38 = 0.84) = 1, R = 0 -> stop
RTE_LINEAR_CEIL = [(200, 14), (300, 24), (400, 28), (500, 26), (600, 18), (700, 11), (800, 4), (900, 1)]
# linear/floor: 13 (R 452), floor(452·2/38 = 23.79) = 23 (R 360), floor(360·3/38 = 28.42) = 28 (R 248),
#   floor(248·4/38 = 26.1) = 26 (R 144), floor(144·5/38 = 18.95) = 18 (R 72), floor(72·6/38 = 11.37) = 11
#   (R 28), floor(28·7/38 = 5.16) = 5 (R 8), floor(8·8/38 = 1.68) = 1 (R 4), floor(4·9/38 = 0.95) = 0 -> 1 (R 0)
RTE_LINEAR_FLOOR = [(200, 13), (300, 23), (400, 28), (500, 26), (600, 18), (700, 11), (800, 5), (900, 1), (1000, 1)]
# nonlinear/ceil: k = ceil(R^α): 504^(1/38) = e^(6.2226/38) = 1.178 -> 2 (R 496); 496^(2/38) = 1.386 -> 2
#   (R 488); 488^(3/38) = 1.630 -> 2 (R 480); 480^(4/38) = 1.915 -> 2 (R 472); 472^(5/38) = 2.248 -> 3 ...
#   sum of the first 20 k = 122 -> R = 16 at t=2200: 16^(2100/3800) = 4.63 -> 5 > R/Δr = 4: the last
#   event overshoots to 72 + 4·127 = 580 (A10)
RTE_NONLINEAR_CEIL = [
    (200, 2), (300, 2), (400, 2), (500, 2), (600, 3), (700, 3), (800, 4), (900, 4), (1000, 5), (1100, 5),
    (1200, 6), (1300, 7), (1400, 8), (1500, 9), (1600, 9), (1700, 10), (1800, 11), (1900, 11), (2000, 10),
    (2100, 9), (2200, 5),
]
RTE_NONLINEAR_FLOOR = [
    (200, 1), (300, 1), (400, 1), (500, 1), (600, 2), (700, 2), (800, 3), (900, 3), (1000, 4), (1100, 4),
    (1200, 5), (1300, 6), (1400, 7), (1500, 8), (1600, 9), (1700, 10), (1800, 11), (1900, 12), (2000, 12),
    (2100, 11), (2200, 8), (2300, 5),
]
# fixed-k, top_h = 9 (IncreLoRA's RTE script): 504 / (4·9) = 14 events exactly, t = 200..1500
RTE_FIXED = [(200 + 100 * i, 9) for i in range(14)]


@pytest.mark.parametrize(
    "mode,rounding,expected,final",
    [
        ("linear", "ceil", RTE_LINEAR_CEIL, 576),
        ("linear", "floor", RTE_LINEAR_FLOOR, 576),
        ("nonlinear", "ceil", RTE_NONLINEAR_CEIL, 580),
        ("nonlinear", "floor", RTE_NONLINEAR_FLOOR, 576),
        ("fixed", "ceil", RTE_FIXED, 576),
        ("fixed", "floor", RTE_FIXED, 576),
    ],
)
def test_rte_schedule(mode, rounding, expected, final):
    events = run_plan(3900, mode, rounding, top_h=9)
    assert [(e.step, e.k) for e in events] == expected
    assert events[-1].total_rank == final
    # Eq. 12 bookkeeping: R decreases by Δr·k at every event
    budget, total = 504, 72
    for e in events:
        assert e.budget_before == budget
        budget -= DR * e.k
        total += DR * e.k
        assert (e.budget_after, e.total_rank) == (budget, total)
        assert e.alpha == pytest.approx((e.step - 100) / 3800)


def test_rte_strict_budget_never_overshoots():
    events = run_plan(3900, "nonlinear", "ceil", strict=True)
    # identical to the reference schedule up to the last event, where k = min(5, 16 // 4) = 4
    assert [(e.step, e.k) for e in events] == RTE_NONLINEAR_CEIL[:-1] + [(2200, 4)]
    assert events[-1].total_rank == 576


# --- MRPC, T = 3450 ----------------------------------------------------------------------------
# linear/ceil: ceil(504·100/3350 = 15.04) = 16 (R 440); ceil(440·200/3350 = 26.27) = 27 (R 332);
#   ceil(332·300/3350 = 29.73) = 30 (R 212); ceil(212·400/3350 = 25.31) = 26 (R 108);
#   ceil(108·500/3350 = 16.12) = 17 (R 40); ceil(40·600/3350 = 7.16) = 8 (R 8); ceil(8·700/3350 = 1.67) = 2 (R 0)
MRPC_LINEAR_CEIL = [(200, 16), (300, 27), (400, 30), (500, 26), (600, 17), (700, 8), (800, 2)]
# linear/floor: 15 (R 444); floor(26.5) = 26 (R 340); floor(30.45) = 30 (R 220); floor(26.27) = 26 (R 116);
#   floor(17.31) = 17 (R 48); floor(8.60) = 8 (R 16); floor(3.34) = 3 (R 4); floor(0.955) = 0 -> 1 (R 0)
MRPC_LINEAR_FLOOR = [(200, 15), (300, 26), (400, 30), (500, 26), (600, 17), (700, 8), (800, 3), (900, 1)]
# nonlinear/ceil: 504^(100/3350) = e^(6.2226·0.02985) = 1.204 -> 2 (R 496), ...
MRPC_NONLINEAR_CEIL = [
    (200, 2), (300, 2), (400, 2), (500, 3), (600, 3), (700, 3), (800, 4), (900, 5), (1000, 6), (1100, 6),
    (1200, 7), (1300, 9), (1400, 10), (1500, 11), (1600, 12), (1700, 12), (1800, 12), (1900, 10), (2000, 7),
]
MRPC_NONLINEAR_FLOOR = [
    (200, 1), (300, 1), (400, 1), (500, 2), (600, 2), (700, 3), (800, 3), (900, 4), (1000, 5), (1100, 6),
    (1200, 7), (1300, 8), (1400, 9), (1500, 10), (1600, 11), (1700, 12), (1800, 13), (1900, 12), (2000, 10),
    (2100, 6),
]
# fixed-k, top_h = 10: 12 events use 480 ranks (R 24), the 13th grows min(10, 24) = 10 modules -> 592
# (the overshoot IncreLoRA's own rule has on MRPC, methods.md 1.8)
MRPC_FIXED = [(200 + 100 * i, 10) for i in range(13)]


@pytest.mark.parametrize(
    "mode,rounding,expected,final",
    [
        ("linear", "ceil", MRPC_LINEAR_CEIL, 576),
        ("linear", "floor", MRPC_LINEAR_FLOOR, 576),
        ("nonlinear", "ceil", MRPC_NONLINEAR_CEIL, 576),
        ("nonlinear", "floor", MRPC_NONLINEAR_FLOOR, 576),
        ("fixed", "ceil", MRPC_FIXED, 592),
        ("fixed", "floor", MRPC_FIXED, 592),
    ],
)
def test_mrpc_schedule(mode, rounding, expected, final):
    events = run_plan(3450, mode, rounding, top_h=10)
    assert [(e.step, e.k) for e in events] == expected
    assert events[-1].total_rank == final
    assert sum(k for _, k in expected) * DR + 72 == final


def test_mrpc_fixed_strict_budget():
    events = run_plan(3450, "fixed", top_h=10, strict=True)
    # the 13th event is capped at 24 // 4 = 6 modules
    assert [(e.step, e.k) for e in events] == MRPC_FIXED[:-1] + [(1400, 6)]
    assert events[-1].total_rank == 576


def test_mnli_first_events_with_delta_r_1():
    # MNLI: 392,702 rows -> 12,272 steps/epoch x 7 = T = 85,904; t0 = interval = 1000, Δr = 1
    T = math.ceil(392702 / 32) * 7
    assert T == 85904
    events = plan(T, 1000, 1000, 72, 8, 1, 1, "linear", "ceil")
    # t=2000: ceil(504·1000/84904 = 5.94) = 6 (R 498); t=3000: ceil(498·2000/84904 = 11.73) = 12 (R 486)
    assert [(e.step, e.k, e.budget_after) for e in events[:2]] == [(2000, 6, 498), (3000, 12, 486)]
    assert events[-1].total_rank == 576


def test_clamps():
    # k >= 1 (paper), k <= M, k <= R (fixed mode: IncreLoRA's min(top_h, target - total))
    assert num_to_grow(101, 100, 3900, 4, 72, 4, "linear") == 1
    assert num_to_grow(3899, 0, 3900, 10_000, 72, 1, "linear") == 72
    assert num_to_grow(200, 100, 3900, 5, 72, 1, "fixed", top_h=9) == 5
    # strict budget: at most R // Δr modules; 0 when R < Δr
    assert num_to_grow(2200, 100, 3900, 16, 72, 4, "nonlinear", strict_budget=True) == 4
    assert num_to_grow(2200, 100, 3900, 3, 72, 4, "linear", strict_budget=True) == 0


def test_linear_k_is_exact_rational():
    from fractions import Fraction

    # 3 · 1/3 is exactly 1: ceil must give 1 (a float product 1.0000000000000002 would give 2)
    assert raw_k("linear", 3, Fraction(1, 3), "ceil", None) == 1
    assert raw_k("linear", 3, Fraction(1, 3), "floor", None) == 1
    with pytest.raises(ValueError):
        raw_k("fixed", 3, Fraction(1, 3), "ceil", None)
    with pytest.raises(ValueError):
        raw_k("cubic", 3, Fraction(1, 3), "ceil", None)
    with pytest.raises(ValueError):
        raw_k("linear", 3, Fraction(1, 3), "round", None)
