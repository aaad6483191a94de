"""Issue 27's bar on the test hosts, on a subset small enough for `make test-hosts`: the shapes
`pmlctl plan` predicts for a machine describing the test host (its link's rate as egress, this
machine's cores shared) against the same shapes' jobs measured on hosts whose links run at that
rate. Every prediction within 20% of what its job measured, and the shape plan recommends within
10% of the measured fastest. bench/plan_accuracy.py runs every shape, link and batch of the issue
(bench/RESULTS.md has its table); tests/hosts/shapes.py is what both use.
"""

from __future__ import annotations

import pytest

from deploy import planning
from hosts import shapes
from hosts.network import Lab
from hosts.supervise import HostTarget

pytestmark = [pytest.mark.hosts, pytest.mark.slow]

# The setting where this 2-core machine's CPU sets the pace: at 1 Gbit/s and batch 256 every shape
# below is predicted by the cores' cap (the tasks' CPU per step, a second ps's, the all-reduce's,
# and the links' packets: link_cpu_per_gb), not by the network model, which the 100 Mbit/s points
# of bench/plan_accuracy.py check (within -14% to +7% there, bench/RESULTS.md). One process is left
# out: the fastest by 7x wherever it runs, its prediction a probe of 1.5 ms steps that moved by 20%
# between runs on a quiet machine; the recommendation among clusters is the harder test.
MBIT, BATCH = 1000, 256
SUBSET = [(2, 1), (3, 1), (2, 2), (3, 2), (3, 0)]  # 2-3 workers with 1-2 ps, and 3 mirrored workers
EPOCHS, EPOCH_SECONDS = 4, 3.0
ERROR_BAR, PICK_BAR = 0.20, 0.10


def test_plan_predicts_the_shapes_as_the_test_hosts_measure_them(hosts_env, tmp_path):
    cal = shapes.calibration(BATCH)
    measured = {}
    with Lab(shapes.lab_hosts()) as lab:
        shapes.shape_links(lab, MBIT)
        link_cpu = shapes.link_cpu_per_gb(lab, MBIT)
        guess = shapes.predicted(shapes.plan_for(cal, tmp_path, MBIT, SUBSET, link_cpu=link_cpu))
        target = HostTarget(lab)
        for i, (w, s) in enumerate(SUBSET):
            rate = guess[w, s].examples_per_sec
            steps = shapes.steps_for(EPOCH_SECONDS, rate, BATCH)
            epochs = shapes.epochs_for(EPOCH_SECONDS, rate, BATCH, EPOCHS)
            measured[w, s] = shapes.run_shape(target, tmp_path, f"plan-acc-{i}", w, s, BATCH, MBIT, steps, epochs)
    errors = {k: guess[k].examples_per_sec / m.examples_per_sec - 1 for k, m in measured.items()}
    fastest = max(measured, key=lambda k: measured[k].examples_per_sec)
    # plan's own choice (deploy/planning.py) among the shapes of the subset: its ranges would add
    # shapes the subset leaves out (1 and 2 mirrored workers)
    pick, _ = planning.choose([guess[k] for k in SUBSET], "fastest", None, None)
    recommended = (pick.workers, pick.ps)
    share = measured[recommended].examples_per_sec / measured[fastest].examples_per_sec
    lines = [
        f"{m.label}: predicted {guess[k].examples_per_sec:.0f}, measured {m.examples_per_sec:.0f} ({errors[k]:+.0%})"
        for k, m in measured.items()
    ]
    print(
        f"\nmeasured [plan on the test hosts, {MBIT} Mbit/s, batch {BATCH}]: {'; '.join(lines)}; recommended "
        f"{shapes.label(*recommended)}, measured fastest {shapes.label(*fastest)}: {share:.0%} of it; Kendall's tau "
        f"{shapes.kendall_tau([guess[k].examples_per_sec for k in measured], [m.examples_per_sec for m in measured.values()]):.2f}",
        flush=True,
    )
    worst = max(errors, key=lambda k: abs(errors[k]))
    assert abs(errors[worst]) <= ERROR_BAR, f"{shapes.label(*worst)} predicted {errors[worst]:+.0%} off: {lines}"
    assert share >= 1 - PICK_BAR, (
        f"plan recommends {shapes.label(*recommended)}, which measured {share:.0%} of the fastest, "
        f"{shapes.label(*fastest)}: {lines}"
    )
