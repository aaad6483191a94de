"""TF_CONFIG: every bad one is refused in one line, before TensorFlow is even imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import said
from hypothesis import given, settings
from hypothesis import strategies as st

from pml_trainer import exits
from pml_trainer.tf_config import BadTFConfig, TFConfig, build, parse

CLUSTER = {"chief": ["h:2222"], "worker": ["h:2223", "h:2224"], "ps": ["h:2225"]}

BAD = {
    "malformed JSON": ('{"cluster": {', "malformed JSON"),
    "missing task": (json.dumps({"cluster": CLUSTER}), 'missing "task"'),
    "type not in cluster": (
        json.dumps({"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "ps", "index": 0}}),
        "not in the cluster",
    ),
    "index out of range": (json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 2}}), "out of range"),
    "unknown task role": (
        json.dumps({"cluster": CLUSTER, "task": {"type": "boss", "index": 0}}),
        "unknown role 'boss'",
    ),
    "unknown cluster role": (
        json.dumps({"cluster": {**CLUSTER, "gpu": ["h:1"]}, "task": {"type": "chief", "index": 0}}),
        "unknown role 'gpu'",
    ),
    "ps without workers": (
        json.dumps({"cluster": {"chief": ["h:1"], "ps": ["h:2"]}, "task": {"type": "chief", "index": 0}}),
        "ps tasks without workers",
    ),
    "two chiefs": (
        json.dumps({"cluster": {"chief": ["h:1", "h:2"], "worker": ["h:3"]}, "task": {"type": "chief", "index": 0}}),
        "2 chiefs",
    ),
    "chief and master": (
        json.dumps({"cluster": {"chief": ["h:1"], "master": ["h:2"]}, "task": {"type": "chief", "index": 0}}),
        "both chief and master",
    ),
    "port not a number": (
        json.dumps({"cluster": {"chief": ["h:http"]}, "task": {"type": "chief", "index": 0}}),
        "is not a port",
    ),
    "port too large": (
        json.dumps({"cluster": {"chief": ["h:70000"]}, "task": {"type": "chief", "index": 0}}),
        "is not a port",
    ),
    "no port": (json.dumps({"cluster": {"chief": ["h"]}, "task": {"type": "chief", "index": 0}}), "not host:port"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_tf_config_fails_in_one_line_before_importing_tensorflow(case):
    raw, expected = BAD[case]
    env = {**os.environ, "TF_CONFIG": raw}
    # If the trainer imported TensorFlow before checking, this would take seconds, and
    # -X importtime would list it.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pml_trainer"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == exits.BAD_INPUT
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1, result.stderr
    assert said(errors[0]).startswith("error: TF_CONFIG: ") and expected in errors[0]
    assert "Traceback" not in result.stderr
    assert "tensorflow" not in result.stderr, "TensorFlow was imported before TF_CONFIG was checked"


def test_master_is_the_chief_and_evaluator_stays_out_of_training():
    cfg = parse(
        json.dumps(
            {
                "cluster": {"master": ["m:1"], "worker": ["w:1"], "ps": ["p:1"], "evaluator": ["e:1"]},
                "task": {"type": "master", "index": 0},
            }
        )
    )
    assert cfg.task_type == "chief" and cfg.is_chief
    assert cfg.strategy == "parameter_server"
    assert cfg.training_cluster == {"chief": ["m:1"], "worker": ["w:1"], "ps": ["p:1"]}


@pytest.mark.parametrize(
    ("cluster", "strategy"),
    [
        ({"chief": ["c:1"], "worker": ["w:1"], "ps": ["p:1"]}, "parameter_server"),
        ({"chief": ["c:1"], "worker": ["w:1"]}, "multi_worker_mirrored"),
        ({"worker": ["w:1", "w:2"]}, "multi_worker_mirrored"),
        ({"chief": ["c:1"]}, "default"),
    ],
)
def test_strategy_follows_the_cluster(cluster, strategy):
    role = next(iter(cluster))
    assert parse(build(cluster, role, 0)).strategy == strategy


def test_without_tf_config_the_trainer_is_alone():
    for raw in (None, "", "  "):
        cfg = parse(raw)
        assert cfg.strategy == "default" and cfg.is_chief


def test_worker_zero_is_chief_without_a_chief():
    assert parse(build({"worker": ["a:1", "b:1"]}, "worker", 0)).is_chief
    assert not parse(build({"worker": ["a:1", "b:1"]}, "worker", 1)).is_chief


def test_build_round_trips():
    for role, tasks in CLUSTER.items():
        for i in range(len(tasks)):
            cfg = parse(build(CLUSTER, role, i))
            assert (cfg.cluster, cfg.task_type, cfg.task_index) == (CLUSTER, role, i)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
roles = st.sampled_from(["chief", "master", "worker", "ps", "evaluator", "boss"])
addresses = st.one_of(
    st.text(max_size=10),
    st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["h", "", "[::1]"]), st.integers(-5, 70000)),
)
tf_configs = st.fixed_dictionaries(
    {
        "cluster": st.dictionaries(roles, st.lists(addresses, max_size=3) | addresses, max_size=4),
    },
    optional={
        "task": st.fixed_dictionaries({"type": roles}, optional={"index": st.integers(-2, 4) | st.text(max_size=2)})
    },
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(tf_configs.map(json.dumps), json_values.map(json.dumps), st.text(max_size=40)))
def test_any_tf_config_parses_or_is_refused_clearly(raw):
    try:
        cfg = parse(raw)
    except BadTFConfig as err:
        message = str(err)
        assert message.startswith("TF_CONFIG: ") and "; " in message and "\n" not in message
        return
    # A config that parses is coherent: the task exists, and ps come with workers and a chief.
    assert cfg.task_type in ("chief", "worker", "ps", "evaluator") and cfg.task_index >= 0
    if cfg.task_type != "evaluator" or "evaluator" in cfg.cluster:
        assert 0 <= cfg.task_index < len(cfg.cluster[cfg.task_type])
    if cfg.cluster.get("ps"):
        assert cfg.cluster.get("worker") and len(cfg.cluster.get("chief", [])) == 1


@pytest.mark.parametrize(
    ("cluster", "words"),
    [
        (
            {"chief": ["c:1"], "worker": ["w:1"] * 6, "ps": ["p:1"] * 3},
            "6 workers and 3 parameter servers, asynchronous updates",
        ),
        ({"chief": ["c:1"], "worker": ["w:1"], "ps": ["p:1"]}, "1 worker and 1 parameter server, asynchronous updates"),
        (
            {"chief": ["c:1"], "worker": ["w:1"] * 2, "evaluator": ["e:1"]},
            "3 mirrored replicas (the chief and 2 workers), synchronous updates",
        ),
        ({"chief": ["c:1"]}, "one process"),
    ],
)
def test_a_job_is_described_in_its_own_words(cluster, words):
    assert TFConfig(cluster, "chief", 0).describe() == words
