"""`pmlctl plan` on a fake machine table and a fixed calibration: every figure it predicts, the
choice under each goal, the shapes it refuses, bad input, the JSON contract, the job file it writes
and the calibration cache. Nothing here starts TensorFlow."""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import yaml
from typer.testing import CliRunner

from deploy import calibrate, planning
from deploy.cli import app
from deploy.costmodel import PAYLOAD, Model, allreduce_seconds
from deploy.machines import load
from deploy.spec import load as load_spec
from pml_trainer.errors import BadInput

MB = 1e6
# Links of 100 MB/s (0.8 Gbit/s) and 200 MB/s, prices easy to add up.
FAKE = {
    "region": "test-1",
    "taken": "2026-01-01",
    "machines": {
        "small": {"vcpus": 2, "memory_gb": 4, "egress_gbps": 0.8, "usd_per_hour": 1.0, "spot_usd_per_hour": 0.25},
        "big": {"vcpus": 8, "memory_gb": 32, "egress_gbps": 1.6, "usd_per_hour": 4.0, "spot_usd_per_hour": 1.0},
        "fast": {"vcpus": 8, "memory_gb": 32, "egress_gbps": 1.6, "usd_per_hour": 4.0, "speed": 2.0},
        "box": {"vcpus": 2, "memory_gb": 32, "egress_gbps": 0.8, "usd_per_hour": 3.0, "shared_cores": 2},
        "tiny": {"vcpus": 1, "memory_gb": 1, "egress_gbps": 0.8, "usd_per_hour": 0.1},
        "offline": {"vcpus": 4, "memory_gb": 16, "egress_gbps": 0, "usd_per_hour": 0},
    },
}
CALIBRATION = {
    "where": "fixed, for the tests",
    "batch": 240,
    "examples_per_epoch": 24000,  # 100 steps an epoch
    "parameter_bytes": 1_000_000,
    "local_step": 0.012,
    "worker_compute": 0.010,
    "bytes_in": 1_000_000,
    "bytes_out": 1_000_000,
    "variable_bytes": [600_000, 1_000, 399_000],
    "allreduce_overhead": 0.005,
    "local_cpu": 0.020,
    "step_cpu": 0.016,
    "memory": {"local": 0.5e9, "worker": 0.6e9, "ps": 2e9},
}


@pytest.fixture
def table(tmp_path) -> pathlib.Path:
    path = tmp_path / "machines.yaml"
    path.write_text(yaml.safe_dump(FAKE))
    return path


@pytest.fixture
def cal_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(CALIBRATION))
    return path


def machines(table):
    return load(base=table)


def cal(**changes) -> planning.Calibration:
    return planning.Calibration.from_json({**CALIBRATION, **changes}, "test")


def roles(table, worker="big", ps=None, chief=None) -> planning.Roles:
    t = machines(table)
    return planning.Roles(t.get(worker), ps and t.get(ps), chief and t.get(chief))


def test_one_process_runs_at_its_calibrated_step_on_one_machine(table):
    shape = planning.predict(cal(), roles(table), 0, 0, epochs=3)
    assert shape.examples_per_sec == pytest.approx(240 / 0.012)  # 20000
    assert shape.seconds == pytest.approx(300 * 240 / 20000)  # 3.6 s
    assert shape.price_usd == pytest.approx(4.0 * 60 / 3600)  # the first minute is billed whole
    assert (shape.parts.compute, shape.parts.transfer, shape.parts.waiting) == (0.012, 0.0, 0.0)


def test_a_ps_shape_is_the_cost_model_on_the_busiest_ps_and_the_workers_own_links(table):
    shape = planning.predict(cal(), roles(table, "big", ps="small"), 3, 2, epochs=100, rtt=0.001)
    # 2 ps take the variables in turn: ps 0 holds 600000 + 399000 of 1000000 bytes; the largest
    # variable, 600000 bytes, is the step's chain. The links carry PAYLOAD of their rate in payload.
    model = Model(3, 0.010, MB, MB, 0.001, share=0.999, chain=0.6)
    expected = model.examples_per_sec(240, 100 * MB * PAYLOAD, 200 * MB * PAYLOAD)
    assert shape.examples_per_sec == pytest.approx(expected)
    # by hand: own legs 5 ms each way, the ps's 9.99 ms each way (it bounds both), 60% of them on the chain
    leg = 0.00999 / PAYLOAD
    alone = 0.010 + 0.6 * 2 * leg + 0.001
    assert shape.examples_per_sec == pytest.approx(3 * 240 / (alone + 2 * 0.6 * 2 * leg**2 / alone))
    assert shape.seconds == pytest.approx(100 * 100 * 240 / expected)
    # 3 workers on big, 2 ps on small, the chief on big
    assert shape.price_usd == pytest.approx((3 * 4.0 + 2 * 1.0 + 4.0) * shape.seconds / 3600)
    assert shape.parts.total == pytest.approx(3 * 240 / shape.examples_per_sec)


def test_mirrored_workers_split_the_batch_and_pay_the_ring_all_reduce(table):
    shape = planning.predict(cal(), roles(table, "big"), 2, 0, epochs=1, rtt=0.001)
    compute = 0.012 * 80 / 240  # 3 replicas (the chief trains too) of 80 examples each
    ring = allreduce_seconds(3, MB, 200 * MB * PAYLOAD, 0.001, 0.005)
    assert shape.examples_per_sec == pytest.approx(240 / (compute + ring))
    assert shape.parts.waiting == 0.005 and shape.parts.transfer == pytest.approx(ring - 0.005)


def test_a_faster_machine_computes_faster_and_the_network_does_not(table):
    slow = planning.predict(cal(), roles(table, "big"), 2, 1, epochs=1)
    fast = planning.predict(cal(), roles(table, "fast"), 2, 1, epochs=1)
    assert fast.parts.compute == pytest.approx(slow.parts.compute / 2)
    assert fast.parts.transfer == pytest.approx(slow.parts.transfer)


def shares_the_cores(shape, work: float, cpu: float, cores: int = 2, chain: float = 0.6, share: float = 1.0) -> None:
    """The shape's workers compute on shared cores as a processor-sharing queue: each step's
    compute is its work over the share of the cores left, 1 / (1 - load), where the load is the
    steps a second times the CPU a step takes over the cores; and the network model with that
    compute gives the shape's examples/s."""
    load = shape.examples_per_sec / 240 * cpu / cores
    assert 0 < load < 1
    assert shape.parts.compute == pytest.approx(work / (1 - load), rel=1e-6)
    network = Model(shape.workers, shape.parts.compute, MB, MB, 0.0, share=share, chain=chain)
    assert shape.examples_per_sec == pytest.approx(network.examples_per_sec(240, 100 * MB * PAYLOAD), rel=1e-6)


def test_on_shared_cores_the_workers_compute_as_the_others_leave_them_cores(table):
    """On shared cores a worker's compute stretches with the load every task puts on the cores
    (Kleinrock's M/G/1-PS); the probe's own compute was stretched so at the load it measured, so the
    work is what is left of it. The load stays below 1: 2 cores and 30 ms a step pass fewer than
    66.7 steps a second however many workers there are."""
    calibrated = cal(step_cpu=0.030, probe_load=0.5)
    one = planning.predict(calibrated, roles(table, "box"), 1, 1, epochs=1, rtt=0.0)
    three = planning.predict(calibrated, roles(table, "box"), 3, 1, epochs=1, rtt=0.0)
    shares_the_cores(one, work=0.005, cpu=0.030)
    shares_the_cores(three, work=0.005, cpu=0.030)
    assert one.examples_per_sec < three.examples_per_sec < 2 * 240 / 0.030
    assert three.price_usd == pytest.approx(3.0 * 60 / 3600)  # the one machine, once


def test_a_calibration_from_before_probe_load_takes_it_from_its_probe_s_record(table):
    """A cached or saved calibration without probe_load has its 1 worker + 1 ps probe's CPU and step:
    without them the compute would be stretched twice, and every CPU-bound shape predicted low."""
    recorded = cal(step_cpu=0.030, measured={"ps_job": {"cpu": 0.030, "step": 0.030}})
    assert recorded.load_of_probe(2) == pytest.approx(0.5)
    given = planning.predict(cal(step_cpu=0.030, probe_load=0.5), roles(table, "box"), 2, 1, epochs=1, rtt=0.0)
    derived = planning.predict(recorded, roles(table, "box"), 2, 1, epochs=1, rtt=0.0)
    assert derived.examples_per_sec == pytest.approx(given.examples_per_sec)
    assert cal(step_cpu=0.030).load_of_probe(2) == 0.0  # nothing recorded: the compute is the work


def test_on_shared_cores_each_ps_past_the_first_and_each_byte_between_hosts_cost_cpu(table, tmp_path):
    """issue 27: a second ps is a task of its own on the shared cores (the calibration's 1 worker
    + 2 ps probe measures what it adds), and a byte between hosts costs the machine CPU beyond the
    loopback's (link_cpu_per_gb); on machines of their own neither shares the workers' cores."""
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"machines": {"box": {"link_cpu_per_gb": 5.0}}}))
    costly = planning.Roles(load(extra, base=table).get("box"))
    calibrated = cal(step_cpu=0.030, ps_cpu=0.004)
    two = planning.predict(calibrated, roles(table, "box"), 3, 2, epochs=1, rtt=0.0)
    # The ps take whole variables in turn: 600 kB and 399 kB on one, 1 kB on the other.
    shares_the_cores(two, work=0.010, cpu=0.030 + 0.004, share=0.999)
    moving = planning.predict(calibrated, costly, 3, 2, epochs=1, rtt=0.0)
    shares_the_cores(moving, work=0.010, cpu=0.030 + 0.004 + 2 * MB * 5.0 / 1e9, share=0.999)
    assert moving.examples_per_sec < two.examples_per_sec
    apart = planning.predict(calibrated, roles(table, "big"), 3, 2, epochs=1, rtt=0.0)
    assert apart.parts.compute == pytest.approx(0.010)


def test_on_shared_cores_a_second_ps_adds_the_step_time_the_probe_measured(table):
    """A worker's compute is the probe's, with the time the calibration's 1 worker + 2 ps probe
    took beyond its 1 worker + 1 ps added per ps past the first; on shared cores, stretched by the load."""
    two = planning.predict(cal(ps_step=0.003), roles(table, "box"), 1, 2, epochs=1, rtt=0.0)
    shares_the_cores(two, work=0.013, cpu=0.016, share=0.999)
    apart = planning.predict(cal(ps_step=0.003), roles(table, "big"), 1, 2, epochs=1, rtt=0.0)
    assert apart.parts.compute == pytest.approx(0.010)  # machines of their own: no shared cores


def test_on_shared_cores_mirrored_replicas_wait_for_the_cpu_their_all_reduce_spends(table, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"machines": {"box": {"link_cpu_per_gb": 5.0}}}))
    box = planning.Roles(load(extra, base=table).get("box"))
    shape = planning.predict(cal(allreduce_cpu=0.006), box, 3, 0, epochs=1, rtt=0.0)
    # 4 replicas: the batch's 20 ms of CPU, 6 ms of all-reduce each, and each sends 1.5 MB at 5 ms a MB
    cpu = 0.020 + 4 * 0.006 + 4 * 1.5 * MB * 5.0 / 1e9
    ring = allreduce_seconds(4, MB, 100 * MB * PAYLOAD, 0.0, 0.0)
    assert 0.010 + ring + 0.005 < cpu / 2  # the replicas' compute, the ring and its fixed cost take less
    assert (shape.parts.compute, shape.parts.transfer, shape.parts.waiting) == pytest.approx(
        (cpu / 2 - ring, ring, 0.0)
    )
    # Uncalibrated (a calibration file without it), the all-reduce's fixed cost stands as before.
    before = planning.predict(cal(), box, 3, 0, epochs=1, rtt=0.0)
    assert before.parts.waiting == 0.005


def test_spot_prices_the_workers_only(table):
    on_demand = planning.predict(cal(), roles(table, "big"), 4, 1, epochs=1000)
    spot = planning.predict(cal(), roles(table, "big"), 4, 1, epochs=1000, spot=True)
    hours = on_demand.seconds / 3600
    assert on_demand.price_usd == pytest.approx((4 * 4.0 + 4.0 + 4.0) * hours)
    assert spot.price_usd == pytest.approx((4 * 1.0 + 4.0 + 4.0) * hours)


@pytest.mark.parametrize(
    ("worker", "workers", "ps", "problem"),
    [
        ("big", 2, 4, "4 ps for 3 variables: 1 ps would hold none"),
        ("big", 3, 0, "batch 240 does not split over the replicas"),  # 4 replicas: 240 / 4 is whole, so 6
        ("tiny", 2, 1, "tiny has 1 GB; a ps of this job held 2.0 GB in the calibration"),
        ("offline", 1, 1, "offline has no network"),
    ],
)
def test_a_shape_that_cannot_run_says_why(table, worker, workers, ps, problem):
    if workers == 3:
        workers = 6  # 7 replicas do not divide 240
    shape = planning.predict(cal(), roles(table, worker), workers, ps, epochs=1)
    assert shape.examples_per_sec is None and problem in shape.problem


def run(table, cal_file, *args):
    batch = [] if "--batch-size" in args else ["--batch-size", str(CALIBRATION["batch"])]
    return CliRunner().invoke(app, ["plan", "--machines", str(table), "--calibration", str(cal_file), *batch, *args])


def test_the_json_is_the_contract(table, cal_file):
    result = run(table, cal_file, "-m", "big", "--workers", "0..3", "--ps", "0..1", "--epochs", "10", "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"calibration", "shapes", "recommended", "why"}
    assert doc["calibration"]["where"] == "fixed, for the tests"
    keys = {"workers", "ps", "machine", "examples_per_sec", "seconds", "price_usd"}
    assert all(set(s) == keys for s in doc["shapes"])
    # one process, 1-3 workers with 1 ps, and mirrored 1 and 2 workers (3 workers: 4 replicas divide 240)
    shapes = {(s["workers"], s["ps"]) for s in doc["shapes"]}
    assert shapes == {(0, 0), (1, 1), (2, 1), (3, 1), (1, 0), (2, 0), (3, 0)}
    assert doc["recommended"] in doc["shapes"]
    fastest = max(s["examples_per_sec"] for s in doc["shapes"])
    level = [s for s in doc["shapes"] if s["examples_per_sec"] >= fastest / 1.02]  # as fast, within the model's noise
    assert doc["recommended"] == min(level, key=lambda s: s["price_usd"]) and doc["why"].startswith("The fastest shape")


def test_one_process_beating_every_cluster_is_said(table, cal_file):
    """A step whose transfers dwarf its compute: the study's MLP on slow links."""
    slow = cal_file.with_name("slow.json")
    slow.write_text(json.dumps({**CALIBRATION, "local_step": 0.002, "worker_compute": 0.002}))
    result = run(table, slow, "-m", "small", "--workers", "0..4", "--ps", "0..1", "-o", "json")
    doc = json.loads(result.stdout)
    assert (doc["recommended"]["workers"], doc["recommended"]["ps"]) == (0, 0)
    assert "one process beats every cluster" in doc["why"]


def test_the_goals_pick_the_fastest_the_cheapest_in_time_and_the_fastest_within_budget(table, cal_file):
    base = ["-m", "big", "-m", "small", "--workers", "0..8", "--ps", "0..2", "--epochs", "2000", "-o", "json"]
    shapes = json.loads(run(table, cal_file, *base).stdout)["shapes"]

    def pick(*extra):
        result = run(table, cal_file, *base, *extra)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    cheapest = min(shapes, key=lambda s: (s["price_usd"], s["seconds"]))
    assert pick("--goal", "cheapest")["recommended"] == cheapest
    deadline = cheapest["seconds"] * 0.9  # the cheapest misses it: something dearer must be chosen
    in_time = pick("--deadline", f"{deadline}s")["recommended"]
    assert in_time == min((s for s in shapes if s["seconds"] <= deadline), key=lambda s: (s["price_usd"], s["seconds"]))
    assert in_time != cheapest  # the deadline changed the answer
    budget = sorted(s["price_usd"] for s in shapes)[len(shapes) // 3]
    within = pick("--budget", f"{budget}usd")["recommended"]
    affordable = [s for s in shapes if s["price_usd"] <= budget]
    quickest = min(s["seconds"] for s in affordable)
    assert within == min((s for s in affordable if s["seconds"] <= quickest * 1.02), key=lambda s: s["price_usd"])


def test_a_deadline_or_budget_nothing_meets_exits_non_zero_and_writes_no_job(table, cal_file, tmp_path):
    """`plan --deadline 2h --write job.yaml && pmlctl submit -f job.yaml` must submit nothing that
    misses the deadline: the plan is shown, its sentence says what fell short, and no job is written."""
    job = tmp_path / "job.yaml"
    for limit in (["--deadline", "1s"], ["--budget", "0.0001usd"]):
        result = run(
            table, cal_file, "-m", "big", "--workers", "0..4", "--ps", "0..1", *limit, "-o", "json", "--write", str(job)
        )
        assert result.exit_code == 1 and not job.exists()
        assert json.loads(result.stdout)["why"].startswith("No shape trains ")
        assert result.stderr.strip().splitlines() == [
            f"error: the {'cheapest within 1s' if limit[0] == '--deadline' else 'fastest within $0.0001'}: no shape meets it; "
            f"{job} not written; loosen it or widen --workers and --machine"
        ]


def test_the_table_shows_where_the_time_goes_and_what_cannot_run(table, cal_file):
    result = run(table, cal_file, "-m", "big", "--workers", "0..6", "--ps", "0..4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    marked = [line for line in lines if line.startswith("* ")]
    assert len(marked) == 1 and "COMPUTE" in result.stdout
    assert any(line.startswith("cannot run: ") and "4 ps for 3 variables" in line for line in lines)
    assert lines[-1].startswith("recommended: ")


def test_the_job_file_it_writes_is_the_recommended_shape_and_a_valid_job(table, cal_file, tmp_path):
    job = tmp_path / "job.yaml"
    result = run(
        table,
        cal_file,
        "-m",
        "big",
        "--workers",
        "1..4",
        "--ps",
        "1..2",
        "--epochs",
        "7",
        "--name",
        "planned",
        "--write",
        str(job),
    )
    assert result.exit_code == 0, result.output
    recommended = result.stdout.splitlines()[-1].split()[1]
    spec = load_spec(job, {})
    assert f"{spec.replicas.workers}x{spec.replicas.ps}" == recommended
    assert (spec.name, spec.trainer.epochs) == ("planned", 7)
    assert spec.roles.worker.node_selector == {"node.kubernetes.io/instance-type": "big"}
    assert spec.roles.chief.node_selector == spec.roles.ps.node_selector == spec.roles.worker.node_selector


def test_the_job_file_pins_each_role_to_the_machine_it_was_planned_on(table, cal_file, tmp_path):
    """The ps and the chief were priced on their own machines: the job runs them there."""
    job = tmp_path / "job.yaml"
    args = ["-m", "small", "--ps-machine", "big", "--chief-machine", "fast", "--workers", "2", "--ps", "1"]
    result = run(table, cal_file, *args, "--write", str(job))
    assert result.exit_code == 0, result.output
    spec = load_spec(job, {})
    placed = {role: getattr(spec.roles, role).node_selector for role in ("chief", "worker", "ps")}
    assert placed == {
        role: {"node.kubernetes.io/instance-type": m}
        for role, m in (("chief", "fast"), ("worker", "small"), ("ps", "big"))
    }
    alone = tmp_path / "alone.yaml"
    assert run(table, cal_file, "-m", "small", "--workers", "0", "--ps", "0", "--write", str(alone)).exit_code == 0
    one = load_spec(alone, {})
    assert (one.replicas.workers, one.roles.chief.node_selector) == (0, {"node.kubernetes.io/instance-type": "small"})
    assert one.roles.worker.node_selector == {}


def test_the_plot_marks_the_recommended_shape(table, cal_file, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plan.png"
    result = run(table, cal_file, "-m", "big", "--workers", "0..4", "--ps", "0..2", "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_machine_figures_are_overridden_by_flags_and_added_by_a_file(table, tmp_path):
    extra = tmp_path / "more.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "machines": {
                    "mine": {"vcpus": 4, "memory_gb": 8, "egress_gbps": 2, "usd_per_hour": 0.5},
                    "big": {"usd_per_hour": 9},
                }
            }
        )
    )
    t = load(extra, ["small.egress_gbps=8"], base=table)
    assert t.get("mine").rate == 2e9 / 8 and t.get("big").usd_per_hour == 9 and t.get("big").vcpus == 8
    assert t.get("small").egress_gbps == 8


def test_the_packaged_table_says_where_its_figures_come_from():
    t = load()
    assert t.region and t.taken != "?" and all(url.startswith("https://cloud.google.com/") for url in t.sources)
    study = {m.study: name for name, m in t.machines.items() if m.study}
    assert study == {
        "master": "n1-highcpu-32",
        "workers": "n1-highcpu-16",
        "ps": "n1-highmem-8",
        "local": "study-local",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "a..b"], "--workers a..b: write a range such as"),
        (["--ps", "0..99"], "--ps 0..99: use numbers from 0 to 64"),
        (["--deadline", "soon"], "--deadline soon: write a time such as 2h"),
        (["--budget", "-3"], "--budget -3: give an amount above 0"),
        (["--goal", "best"], "--goal best: use fastest or cheapest"),
        (["--set", "big.colour=3"], "--set big.colour=3: colour is not a figure"),
        (["--set", "big"], "--set big: write it as MACHINE.FIELD=VALUE"),
        (["-m", "huge"], "--machine huge: not in the machine table"),
        (["--deadline", "2h", "--budget", "3"], "--deadline and --budget: give one"),
        (["-o", "yaml"], "--output yaml: use table or json"),
        (["--image", "mine:1"], "--image mine:1: -t local runs no image; give the target of the image's probe"),
        # NaN passes `< 0`: it once priced shapes at $nan and recommended one of them.
        (["--set", "big.usd_per_hour=nan"], "--set big.usd_per_hour=nan: give a number, 0 or more"),
        (["--set", "big.egress_gbps=-4"], "--set big.egress_gbps=-4: give a number, 0 or more"),
        # The bounds before the range is built: this one once filled the memory.
        (["--workers", "0..100000000000"], "--workers 0..100000000000: use numbers from 0 to 256, e.g. 0..4"),
        (["--workers", "3..1"], "--workers 3..1: 3..1 runs backwards; write it low to high, 1..3"),
        # It once took the deadline's goal silently over the one asked for.
        (["--goal", "fastest", "--deadline", "2h"], "--goal fastest and --deadline: give one"),
        (["--budget", "inf"], "--budget inf: give an amount above 0"),
    ],
)
def test_bad_input_is_one_line(table, cal_file, args, message):
    result = run(table, cal_file, *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output


def test_a_missing_calibration_file_is_one_line(table, tmp_path):
    result = CliRunner().invoke(app, ["plan", "--machines", str(table), "--calibration", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "no such file" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"local_step": "fast"}, "must be numbers above 0"),
        ({"ps_cpu": "0.004"}, "ps_cpu must be a number, 0 or more (or left out)"),
        # NaN passes `< 0`: it once gave a traceback here, and $nan prices elsewhere.
        ({"local_step": float("nan")}, "must be numbers above 0"),
        ({"ps_cpu": float("inf")}, "ps_cpu must be a number, 0 or more"),
        ({"memory": {"worker": "lots"}}, "memory must map roles (local, worker, ps) to the bytes a task held"),
        ({"memory": "worker"}, "memory must map roles"),
        ({"batch": 32.5}, "batch 32.5 must be a whole number of examples"),
        ({"variable_bytes": 5}, "variable_bytes must list each variable's bytes, every one above 0"),
        ({"variable_bytes": [0, 0]}, "variable_bytes must list each variable's bytes"),
        ({"measured": [1]}, "measured must map each probe to its figures (or be left out)"),
    ],
)
def test_a_calibration_s_every_figure_is_checked(table, tmp_path, changes, message):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({**CALIBRATION, **changes}))  # json writes NaN and Infinity, as Python reads them
    result = CliRunner().invoke(app, ["plan", "--machines", str(table), "--calibration", str(path)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_a_calibration_of_another_batch_is_refused(table, cal_file):
    """It once replaced the job's batch silently: a plan of batch 240 written as a job of batch 256."""
    result = run(table, cal_file, "--batch-size", "256")
    assert result.exit_code == 2
    assert (
        result.stderr
        == "error: the calibration is for batch 240, the job's is 256; give --batch-size 240, or a calibration\n"
    )


def test_a_machine_file_s_nan_price_is_refused(table, cal_file, tmp_path):
    extra = tmp_path / "more.yaml"
    extra.write_text(
        yaml.safe_dump({"machines": {**FAKE["machines"], "big": {**FAKE["machines"]["big"], "usd_per_hour": math.nan}}})
    )
    result = run(table, cal_file, "--machines", str(extra), "-m", "big")
    assert result.exit_code == 2
    assert result.stderr == f"error: --machines {extra}: big: usd_per_hour: figures are numbers, 0 or more\n"


def test_an_unwritable_plot_or_job_file_is_refused_before_anything_is_shown_or_written(table, cal_file, tmp_path):
    png, job = tmp_path / "left.png", tmp_path / "job.yaml"
    for args, why in (
        (["--plot", str(tmp_path / "no" / "p.png"), "--write", str(job)], "No such file or directory"),
        (["--plot", str(png), "--write", str(tmp_path)], "Is a directory"),
        # Root passes every permission check: /proc refuses only when the file is opened.
        (["--plot", str(png), "--write", "/proc/plan.yaml"], "No such file or directory"),
    ):
        result = run(table, cal_file, "-m", "big", "-o", "json", *args)
        assert result.exit_code == 2 and result.stdout == "" and result.stderr.count("\n") == 1
        assert f"cannot write it ({why}); give a file in an existing folder you can write to" in result.stderr
    assert not png.exists() and not job.exists()
    for args, message in (
        (["--plot", str(tmp_path / "plan.xyz")], "the plot is a PNG; give a file ending in .png"),
        (["--plot", str(png), "--write", str(png)], f"--plot and --write name one file, {png}; give each its own"),
    ):
        result = run(table, cal_file, "-m", "big", *args)
        assert result.exit_code == 2 and result.stdout == "" and message in result.stderr
    assert list(tmp_path.glob("*.png")) == []


def test_the_chief_s_machine_is_held_to_what_it_runs(table):
    """One process runs on (and is named for) the workers' machine; a mirrored chief trains a replica
    and needs the network, as every task of a cluster does (an offline chief once divided by 0)."""
    alone = planning.predict(cal(), roles(table, "big", chief="tiny"), 0, 0, epochs=1)
    assert alone.machine == "big"
    held = cal(memory={"local": 1.5e9, "worker": 1.5e9})
    assert planning.predict(held, roles(table, "big", chief="tiny"), 0, 0, epochs=1).problem is None
    mirrored = planning.predict(held, roles(table, "big", chief="tiny"), 1, 0, epochs=1)
    assert mirrored.problem == "tiny has 1 GB; a worker of this job held 1.5 GB in the calibration"
    offline = planning.predict(cal(), roles(table, "big", chief="offline"), 3, 0, epochs=1)
    assert offline.problem == "offline has no network: it can run one process only"
    served = planning.predict(cal(), roles(table, "big", chief="offline"), 2, 1, epochs=1)
    assert served.problem == "offline has no network: it can run one process only"


def test_a_cached_calibration_makes_the_second_plan_instant(table, pml_home, monkeypatch, tmp_path):
    """The first plan probes (here a stand-in that counts), the second reads the cache."""
    probes = []

    def probe(spec, target, steps, say, link=None):
        probes.append(spec.trainer.batch_size)
        found = cal(batch=spec.trainer.batch_size)
        path = calibrate.cache_dir() / f"{calibrate.key(spec, 'local', steps)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(found.to_json()))
        return found

    monkeypatch.setattr(calibrate, "measure", probe)
    monkeypatch.chdir(tmp_path)
    args = ["plan", "--machines", str(table), "-m", "big", "--batch-size", "240", "-o", "json"]
    first = CliRunner().invoke(app, args)
    second = CliRunner().invoke(app, args)
    assert first.exit_code == second.exit_code == 0, first.output
    assert probes == [240] and json.loads(first.stdout) == json.loads(second.stdout)
    CliRunner().invoke(app, [*args[:-2], "--batch-size", "120", "-o", "json"])  # another job: probed again
    assert probes == [240, 120]


class Stub:
    """A target whose probe job ends at once, leaving the metrics of 3 epochs and the readings it is given."""

    sees_local_files = True

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.notes: list[str] = []

    def note(self, text):
        self.notes.append(text)

    def plan(self, spec, options):
        return spec

    def submit(self, spec):
        from pml_trainer.storage import open_store

        store = open_store(spec.trainer.model_dir)
        rows = [{"step": 10 * e, "examples_per_sec": 1000.0, "seconds": 1.0} for e in (1, 2, 3)]
        store.put_bytes("".join(json.dumps(r) + "\n" for r in rows).encode(), "metrics.jsonl")
        for name, text in self.files.items():
            store.put_bytes(text.encode(), name)
        return spec.name

    def wait(self, handle, timeout):
        from deploy.target import Outcome

        return Outcome(handle, "Succeeded")

    def delete(self, handle):
        return None


def readings_of(task: str, samples, marks=(), space="elsewhere:1") -> str:
    return json.dumps(
        {
            "task": task,
            "space": space,
            "host": "node-a",
            "cpus": 4,
            "cpu_model": "X",
            "samples": samples,
            "marks": list(marks),
        }
    )


def test_a_probe_whose_tasks_left_no_readings_says_so_rather_than_counting_nothing(tmp_path):
    """An image older than the readings (pml_trainer.readings) would give a calibration of no CPU
    and no bytes, and a plan without the cores' cap; the probe refuses it in one line."""
    from deploy.spec import JobSpec

    with pytest.raises(
        BadInput,
        match=r"^the calibration's probe \(one\) left no readings: its image predates them \(pml_trainer.readings\); rebuild it",
    ):
        calibrate._probe(Stub({}), JobSpec(), str(tmp_path), "one", 0, 0, 10, 1000)


def test_a_probe_takes_each_task_s_readings_over_the_epochs_training_only(tmp_path):
    """CPU and bytes between each measured epoch's start and end, interpolated between samples:
    not the validation and uploads between epochs, and each network namespace's bytes once."""
    from deploy.spec import JobSpec

    # Epoch 2 trains from t=10 to 12 (steps 10-20), epoch 3 from 20 to 22 (steps 20-30); 1 CPU-s and
    # 1000 bytes a second while training, and 5 CPU-s between epochs, which must not count.
    def spent(t):
        training = min(max(t - 10, 0), 2) + min(max(t - 20, 0), 2)
        between = min(max(t - 12, 0), 8) * 5 / 8
        return training, between

    def samples(rate):
        return [[t / 10, sum(spent(t / 10)) * rate, spent(t / 10)[0] * 1000, 5e8] for t in range(301)]

    marks = [[0, 1, 10], [10, 12, 20], [20, 22, 30]]
    files = {
        "readings/chief-0.json": readings_of("chief-0", samples(1), marks, space="a:1"),
        "readings/worker-0.json": readings_of("worker-0", samples(2), space="b:1"),
        "readings/ps-0.json": readings_of("ps-0", samples(1), space="b:1"),  # the worker's namespace
    }
    found = calibrate._probe(Stub(files), JobSpec(), str(tmp_path), "ps", 1, 1, 10, 1000)
    assert found["steps"] == 20
    assert found["cpu"] == pytest.approx((2 + 2) * (1 + 2 + 1) / 20)  # 4 CPU-s a task-rate, over 20 steps
    assert found["bytes"] == pytest.approx(2 * 4 * 1000 / 20)  # namespaces a and b, each once
    assert (found["host"], found["cpus"], found["memory"], found["ps_memory"]) == ("node-a", 4, 5e8, 5e8)


def test_a_probe_refuses_readings_that_miss_its_epochs(tmp_path):
    from deploy.spec import JobSpec

    marks = [[0, 1, 10], [10, 12, 20], [20, 22, 30]]
    files = {
        "readings/chief-0.json": readings_of("chief-0", [[t / 10, t, t, 1] for t in range(301)], marks),
        "readings/worker-0.json": readings_of("worker-0", [[t / 10, t, t, 1] for t in range(301)]),
        "readings/ps-0.json": readings_of("ps-0", [[t / 10, t, t, 1] for t in range(151)]),  # gone before epoch 3
    }
    with pytest.raises(BadInput, match=r"^the calibration's probe \(ps\) has no readings of ps-0 around each measured"):
        calibrate._probe(Stub(files), JobSpec(), str(tmp_path), "ps", 1, 1, 10, 1000)


def test_a_probe_on_a_cluster_needs_a_model_dir_pmlctl_can_read(table, pml_home, tmp_path, monkeypatch):
    """The pods' readings come back through the model dir: a folder on a pod's disk never would."""
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(
        app, ["plan", "-t", "k8s", "--machines", str(table), "-m", "big", "--model-dir", "runs/x"]
    )
    assert done.exit_code == 2
    assert done.stderr.strip().splitlines() == [
        "error: --model-dir runs/x: the runs on -t k8s cannot write to this machine; give --model-dir "
        "gs://BUCKET/PATH or s3://BUCKET/PATH, where pmlctl reads their metrics"
    ]


def test_a_probe_on_a_cluster_runs_under_the_model_dir_and_reckons_the_planned_machine_s_link(
    table, pml_home, tmp_path, monkeypatch
):
    """On -t k8s the probe's jobs go under the job's own bucket, and a step's transfers are taken
    at the planned machine's rate, not this machine's loopback (which is never measured)."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    roots = []

    def probe(chosen, spec, root, kind, workers, ps, steps, examples, epochs=calibrate.EPOCHS):
        roots.append(root)
        step = {"one": 0.01, "ps": 0.02, "ps2": 0.025, "mirrored": 0.015}[kind]
        return {
            "step": step, "steps": 2 * steps, "examples_per_sec": [240 / step] * 2, "seconds": [9.0, 9.0],
            "cpu": 0.03, "bytes": 2e6, "memory": 5e8, "ps_memory": 4e8 if ps else None,
            "host": "node-a", "cpus": 4, "cpu_model": "X",
        }  # fmt: skip

    def loopback():
        raise AssertionError("a cluster's probe measured this machine's loopback")

    report = {"examples_per_epoch": 24000, "variable_bytes": [600_000, 400_000], "parameters": 250_000}
    monkeypatch.setattr(calibrate, "_check", lambda spec: report)
    monkeypatch.setattr(calibrate, "_probe", probe)
    monkeypatch.setattr(calibrate, "_loopback", loopback)
    monkeypatch.chdir(tmp_path)
    args = ["plan", "-t", "k8s", "--machines", str(table), "-m", "big", "--batch-size", "240"]
    done = CliRunner().invoke(app, [*args, "--model-dir", "s3://bucket/jobs/x", "--probe-steps", "10", "-o", "json"])
    assert done.exit_code == 0, done.output
    cal = json.loads(done.stdout)["calibration"]
    assert roots == ["s3://bucket/jobs/x"] * 4
    rate = load(base=table).get("big").rate * PAYLOAD
    assert cal["measured"]["link_rate"] == pytest.approx(rate)
    assert cal["where"].startswith("-t k8s on node-a: 4 CPUs (X), ")
    assert cal["probe_load"] == pytest.approx(0.03 / (4 * 0.02))  # the ps probe's CPU over its node's cores
    expected = Model(1, 0.0, 1e6, 1e6, planning.DEFAULT_RTT, chain=calibrate.chain_share([600_000, 400_000]))
    assert cal["worker_compute"] == pytest.approx(expected.with_compute_of(0.02, rate).compute)


MARKS = [[0, 1, 10], [10, 12, 20], [20, 22, 30]]


def steady():
    """Readings sampled every 0.1 s from 0 to 30 s: 1 CPU-second and 1000 bytes a second."""
    return [[t / 10, t / 10, t * 100.0, 1e8] for t in range(301)]


def test_a_probe_refuses_when_a_task_left_no_readings(tmp_path):
    """A ps that could not publish (another identity on its node pool, a full disk) would leave its
    CPU and its namespace's bytes out, a third low, without a word."""
    from deploy.spec import JobSpec

    files = {
        "readings/chief-0.json": readings_of("chief-0", steady(), MARKS, space="a:1"),
        "readings/worker-0.json": readings_of("worker-0", steady(), space="b:1"),
    }
    with pytest.raises(
        BadInput, match=r"^the calibration's probe \(ps\) has no readings of ps-0: the task could not publish them"
    ):
        calibrate._probe(Stub(files), JobSpec(), str(tmp_path), "ps", 1, 1, 10, 1000)


def test_a_gap_in_a_task_s_samples_is_refused_not_bridged(tmp_path):
    """Samples 30 s apart would mix the time between epochs into the measured ones."""
    from deploy.spec import JobSpec

    files = {
        "readings/chief-0.json": readings_of("chief-0", steady(), MARKS, space="a:1"),
        "readings/worker-0.json": readings_of("worker-0", [[0, 0, 0, 1e8], [30, 9, 9000, 1e8]]),
        "readings/ps-0.json": readings_of("ps-0", steady()),
    }
    with pytest.raises(BadInput, match=r"has no readings of worker-0 around each measured epoch's start and end"):
        calibrate._probe(Stub(files), JobSpec(), str(tmp_path), "ps", 1, 1, 10, 1000)


def test_tasks_in_this_machine_s_own_namespace_give_no_bytes_and_the_calibration_says_so(
    tmp_path, monkeypatch, pml_home
):
    """PML_LOCAL_NETWORK=host: the tasks share pmlctl's namespace, whose bytes are not only theirs."""
    from deploy.spec import JobSpec
    from pml_trainer import readings

    here = readings.space()
    files = {
        "readings/chief-0.json": readings_of("chief-0", steady(), MARKS, space=here),
        "readings/worker-0.json": readings_of("worker-0", steady(), space=here),
        "readings/ps-0.json": readings_of("ps-0", steady(), space=here),
    }
    found = calibrate._probe(Stub(files), JobSpec(), str(tmp_path), "ps", 1, 1, 10, 1000)
    assert found["bytes"] is None and found["cpu"] == pytest.approx(3 * 4 / 20)

    def probe(chosen, spec, root, kind, workers, ps, steps, examples, epochs=calibrate.EPOCHS):
        return {**found, "ps_memory": 1e8 if ps else None, "seconds": [9.0, 9.0]}

    monkeypatch.setattr(calibrate, "_check", lambda spec: {"examples_per_epoch": 24000, "variable_bytes": [8, 4]})
    monkeypatch.setattr(calibrate, "_probe", probe)
    monkeypatch.setattr(calibrate, "_loopback", lambda: (1e-4, 1e9))
    said = []
    cal = calibrate.measure(JobSpec(), None, 10, said.append)
    assert cal.measured["bytes_counted"] is False and cal.bytes_in == 12
    assert any(line.startswith("  1 worker + 1 ps: ") and line.endswith(" bytes not counted") for line in said)


def test_a_probe_s_remote_folder_that_cannot_be_deleted_is_named_not_raised_over_its_result(tmp_path, monkeypatch):
    from deploy.spec import JobSpec
    from pml_trainer.storage import StorageUnavailable, open_store

    class Undeletable:
        def __init__(self, store):
            self.store = store

        def __getattr__(self, name):
            return getattr(self.store, name)

        def delete(self, name):
            raise StorageUnavailable("503 Slow Down")

    monkeypatch.setattr(calibrate, "open_store", lambda uri, endpoint: Undeletable(open_store(uri)))
    monkeypatch.setattr(calibrate, "is_remote", lambda uri: True)
    files = {
        "readings/chief-0.json": readings_of("chief-0", steady(), MARKS, space="a:1"),
        "readings/worker-0.json": readings_of("worker-0", steady()),
        "readings/ps-0.json": readings_of("ps-0", steady()),
    }
    target = Stub(files)
    found = calibrate._probe(target, JobSpec(), str(tmp_path), "ps", 1, 1, 10, 1000)
    assert found["cpu"] == pytest.approx(3 * 4 / 20)
    [note] = target.notes
    assert note.startswith(f"the calibration's probe left {tmp_path}/plan-probe-ps-") and "503 Slow Down" in note


def test_a_probe_s_job_does_not_restart_and_a_failed_one_is_named(tmp_path):
    """A restarted chief would mark its epochs again from where it resumed; Kubeflow counts no
    ExitCode restart against the backoff limit, so the probe asks for none at all."""
    from deploy.spec import JobSpec
    from deploy.target import Outcome

    class Failing(Stub):
        def plan(self, spec, options):
            self.spec = spec
            return spec

        def wait(self, handle, timeout):
            return Outcome(handle, "Failed", "job x failed (exit code 2): chief-0: bad flags")

    target = Failing({})
    with pytest.raises(
        BadInput, match=r"^the calibration's probe \(ps, job plan-probe-ps-[0-9a-f]{6}\) did not finish: job x failed"
    ):
        calibrate._probe(target, JobSpec(), str(tmp_path), "ps", 1, 1, 10, 1000)
    assert (target.spec.policy.backoff_limit, target.spec.policy.restart_policy) == (0, "Never")
    assert target.spec.env["PML_READINGS"] == "1"


def test_a_cluster_s_calibration_is_keyed_by_its_kubeconfig_context_and_server(tmp_path, monkeypatch):
    """Read without the context's authentication, which may run a plugin that prompts."""
    from deploy.k8s.api import place
    from deploy.spec import JobSpec

    def kubeconfig(server):
        path = tmp_path / f"kubeconfig-{len(server)}"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "current-context": "pml",
                    "contexts": [{"name": "pml", "context": {"cluster": "c", "user": "u"}}],
                    "clusters": [{"name": "c", "cluster": {"server": server}}],
                    "users": [{"name": "u", "user": {"exec": {"command": "/nonexistent/prompting-plugin"}}}],
                }
            )
        )
        monkeypatch.setenv("KUBECONFIG", str(path))

    kubeconfig("https://10.0.0.1:6443")
    assert place() == ["pml", "https://10.0.0.1:6443"]
    first = calibrate.key(JobSpec(), "k8s", 100)
    kubeconfig("https://10.0.0.2:64430")  # a recreated cluster of the same name
    assert calibrate.key(JobSpec(), "k8s", 100) != first
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    assert place() is None


def test_the_table_lists_the_shapes_as_the_goal_ranks_them_with_prices_that_show(table, cal_file):
    """Under --goal cheapest the pick once came after 12 dearer rows, and a short job's price read $0.00."""
    base = ["-m", "big", "-m", "small", "-m", "big", "--workers", "0..6", "--ps", "0..2", "--epochs", "1"]
    for goal, key in (
        ("fastest", lambda s: (s["seconds"], s["price_usd"])),
        ("cheapest", lambda s: (s["price_usd"], s["seconds"])),
    ):
        result = run(table, cal_file, *base, "--goal", goal, "-o", "json")
        shapes = json.loads(result.stdout)["shapes"]
        firsts = [key(s)[0] for s in shapes]  # rounded in the JSON: ties there may be ordered by the unrounded
        assert firsts == sorted(firsts)
        assert len({(s["workers"], s["ps"], s["machine"]) for s in shapes}) == len(shapes)  # -m big twice: once
    result = run(table, cal_file, *base, "--goal", "cheapest")
    rows = [
        line for line in result.stdout.splitlines() if line[2:3].strip() and line[:2] in ("* ", "  ") and "$" in line
    ]
    assert rows[0].startswith("* ")  # the cheapest first, and the pick
    assert all("$0.00 " not in row for row in rows)


@pytest.mark.parametrize(
    ("amount", "shown"), [(12.345, "$12.35"), (0.1, "$0.10"), (0.0042, "$0.0042"), (0.05, "$0.050"), (0, "$0.00")]
)
def test_a_price_shows_its_cents_or_two_figures(amount, shown):
    assert planning.usd(amount) == shown


EVERY = ((0, 0), (2, 0), (2, 1))


@pytest.mark.parametrize(
    ("changes", "machine", "shapes"),
    [
        ({"bytes_in": 1e308}, "big", [(2, 1)]),
        ({"examples_per_epoch": 1e308}, "big", EVERY),
        ({"local_step": 1e-320}, "big", [(0, 0)]),
        ({}, "crawl", EVERY),  # a machine of speed 1e-320
    ],
)
def test_figures_that_overflow_are_a_refusal_not_inf_or_a_traceback(table, changes, machine, shapes):
    slow = {"vcpus": 2, "memory_gb": 32, "egress_gbps": 1e-320, "usd_per_hour": 1.0, "speed": 1e-320}
    table.write_text(yaml.safe_dump({**FAKE, "machines": {**FAKE["machines"], "crawl": slow}}))
    found = [planning.predict(cal(**changes), roles(table, machine), w, p, epochs=3) for w, p in shapes]
    assert all(s.examples_per_sec is None and "overflow" in s.problem for s in found), found


def test_a_round_trip_past_any_network_is_refused(table, cal_file):
    result = run(table, cal_file, "--rtt", "inf")
    assert (
        result.exit_code == 2 and "Invalid value for '--rtt': Input should be less than or equal to 10" in result.output
    )


def test_a_calibration_s_broken_probe_record_takes_no_load():
    """measured is the probe's record: a hand-written one that is not figures counts as none."""
    assert cal(measured={"ps_job": {"cpu": 1, "step": 1, "cpus": "abc"}}).load_of_probe(4) == 0.25
    assert cal(measured={"ps_job": [1]}).load_of_probe(4) == 0.0


def test_one_process_is_pinned_to_the_workers_machine_whatever_the_chief_s(table, cal_file, tmp_path):
    job = tmp_path / "job.yaml"
    result = run(
        table, cal_file, "-m", "small", "--chief-machine", "big", "--workers", "0", "--ps", "0", "--write", str(job)
    )
    assert result.exit_code == 0, result.output
    assert load_spec(job, {}).roles.chief.node_selector == {"node.kubernetes.io/instance-type": "small"}
