"""The cost model (deploy/costmodel.py): the algebra bench/network_cost.py's table, the study's prediction and
`pmlctl plan` rest on."""

from __future__ import annotations

import pytest

from deploy.costmodel import PAYLOAD, Model, allreduce_seconds, chain_share, round_robin_share

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


def test_only_the_largest_variables_transfers_follow_the_compute_the_rest_pass_beside_them():
    """The MLP's first kernel is 85% of its bytes: the next step waits on its update, not on the
    biases' and the small kernels', whose transfers overlap it and the compute."""
    mlp = [784 * 128 * 4, 128 * 4, 128 * 128 * 4, 128 * 4, 128 * 10 * 4, 10 * 4]
    assert chain_share(mlp) == pytest.approx(784 * 128 / (sum(mlp) / 4))
    assert chain_share([]) == 1.0
    one = Model(workers=1, compute=0.010, d_in=1 * MB, d_out=1 * MB, rtt=0.001, chain=0.8)
    assert one.step_seconds(100 * MB) == pytest.approx(0.010 + 0.8 * 0.020 + 0.001)
    # however much overlaps, the link carries every byte of a step each way
    quick = Model(workers=1, compute=0.001, d_in=1 * MB, d_out=1 * MB, rtt=0.0, chain=0.1)
    assert quick.step_seconds(100 * MB) == pytest.approx(0.010)


def test_a_link_carries_a_little_less_payload_than_its_rate():
    # a 1514-byte frame carries 1448 bytes of TCP payload: 100 Mbit/s passes 95.6 Mbit/s of it, as the test hosts measure 96
    assert pytest.approx(95.6, abs=0.05) == 100 * PAYLOAD


@pytest.mark.parametrize("workers", [1, 2, 7])
@pytest.mark.parametrize("chain", [1.0, 0.85])
def test_the_calibration_recovers_the_compute_a_step_time_implies(workers, chain):
    true = Model(workers, compute=0.0123, d_in=0.48 * MB, d_out=0.47 * MB, rtt=0.0001, chain=chain)
    found = Model(workers, 0.0, true.d_in, true.d_out, true.rtt, chain=chain).with_compute_of(
        true.step_seconds(118 * MB), 118 * MB
    )
    assert found.compute == pytest.approx(true.compute)


def test_a_second_ps_relieves_only_the_share_of_the_bytes_it_holds():
    """Variables go to the ps in turn: an MLP's big first kernel keeps one ps busy whatever their number."""
    mlp = [784 * 128 * 4, 128 * 4, 128 * 128 * 4, 128 * 4, 128 * 10 * 4, 10 * 4]
    assert round_robin_share(mlp, 1) == 1.0
    assert round_robin_share(mlp, 2) == pytest.approx((784 * 128 + 128 * 128 + 1280) / (sum(mlp) / 4))
    assert round_robin_share([100, 100, 100, 100], 4) == pytest.approx(0.25)
    two = Model(workers=3, compute=0.010, d_in=1 * MB, d_out=1 * MB, rtt=0.0, share=0.5)
    # the worker's own link still carries all of its bytes; the ps's link half of them
    assert two.parts(100 * MB).transfer == pytest.approx(0.020)
    alone = 0.030
    assert two.step_seconds(100 * MB) == pytest.approx(alone + 2 * 2 * 0.005**2 / alone)


def test_the_parts_of_a_step_add_up_to_what_the_link_lets_through():
    many = Model(workers=8, compute=0.2, d_in=1 * MB, d_out=1 * MB, rtt=0.0)
    parts = many.parts(10 * MB)
    assert parts.compute == 0.2 and parts.transfer == pytest.approx(0.2)
    assert 8 * 100 / parts.total == pytest.approx(many.examples_per_sec(100, 10 * MB))


def test_a_ring_all_reduce_moves_twice_the_bytes_less_one_share_and_waits_2_n_minus_1_round_trips():
    assert allreduce_seconds(1, 1 * MB, 100 * MB, 0.001, 0.005) == 0.0
    assert allreduce_seconds(4, 1 * MB, 100 * MB, 0.001, 0.005) == pytest.approx(0.005 + 1.5 * 0.01 + 6 * 0.001)
