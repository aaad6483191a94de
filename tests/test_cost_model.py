"""bench/network_cost.py's cost model: the algebra its table and the study's prediction rest on."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from network_cost import Model

MB = 1e6


def test_a_step_is_compute_then_both_transfers_then_a_round_trip_when_alone():
    one = Model(workers=1, compute=0.010, d_in=1 * MB, d_out=0.5 * MB, rtt=0.001)
    assert one.step_seconds(100 * MB) == pytest.approx(0.010 + 0.010 + 0.005 + 0.001)


def test_another_workers_transfers_cost_what_random_offsets_make_them_meet():
    """Two transfers of length T meet in 2T of every `alone` seconds and then each loses T/2."""
    two = Model(workers=2, compute=0.010, d_in=1 * MB, d_out=1 * MB, rtt=0.0)
    alone = 0.030
    assert two.step_seconds(100 * MB) == pytest.approx(alone + 2 * 0.010**2 / alone)


def test_the_link_caps_what_all_workers_pass_together():
    many = Model(workers=8, compute=0.2, d_in=1 * MB, d_out=1 * MB, rtt=0.0)
    assert 8 * 100 / many.step_seconds(10 * MB) > 1000  # the steps alone would pass more than the link can
    assert many.examples_per_sec(100, 10 * MB) == pytest.approx(100 * 10)  # 10 steps' weights a second


@pytest.mark.parametrize("workers", [1, 2, 7])
def test_the_calibration_recovers_the_compute_a_step_time_implies(workers):
    true = Model(workers, compute=0.0123, d_in=0.48 * MB, d_out=0.47 * MB, rtt=0.0001)
    found = Model(workers, 0.0, true.d_in, true.d_out, true.rtt).with_compute_of(true.step_seconds(118 * MB), 118 * MB)
    assert found.compute == pytest.approx(true.compute)
