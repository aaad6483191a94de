"""Property-based tests: arbitrary input to the JobSpec model and the storage URI parser either
gives a valid value or is refused with the project's one-line error, never anything else.

The TF_CONFIG parser has its own in test_tf_config.py.
"""

from __future__ import annotations

import os
import string
from unittest import mock

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from deploy import chart
from deploy.spec import DNS_1035, ENV_NAME, MAX_NAME, JobSpec, describe, load
from pml_trainer import storage
from pml_trainer.errors import BadInput
from pml_trainer.options import TrainOptions

SETTINGS = settings(max_examples=400, deadline=None)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=False, width=32), st.text(max_size=12)
)
names = st.one_of(st.from_regex(DNS_1035, fullmatch=True), st.text(max_size=70), scalars)
locations = st.one_of(
    st.builds(
        "{}://{}/{}".format,
        st.sampled_from(["gs", "s3", "gcs", "S3", ""]),
        st.one_of(st.from_regex(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", fullmatch=True), st.text(max_size=8)),
        st.lists(st.sampled_from(["a", "runs", "", ".", "..", "x y", "é"]), max_size=4).map("/".join),
    ),
    st.text(max_size=20),
)
quantities = st.one_of(
    st.sampled_from(["500m", "2", "1.5", "4Gi", "512M", "1e9", "4GB", "-1", "two", ""]),
    st.integers(-2, 64),
    st.floats(-1, 64, allow_nan=False),
    st.text(max_size=6),
)
trainer_values = {
    "epochs": st.integers(-1, 50),
    "batch_size": st.integers(-1, 4096) | st.text(max_size=4),
    "learning_rate": st.floats(-1, 1, allow_nan=False),
    "validation_split": st.floats(-0.5, 1.5, allow_nan=False),
    "model": st.sampled_from(["mlp", "cnn", "rnn", ""]),
    "hidden_layers": st.integers(-1, 70),
    "neurons": st.integers(-1, 70000),
    "model_dir": locations,
    "data_dir": locations | st.none(),
    "dataset": st.one_of(
        st.sampled_from(
            ["synthetic", "synthetic:8x8x3", "synthetic:8x8", "fashion_mnist", "flowers", "imagenet", "npz:", "images:"]
        ),
        locations.map("npz:{}".format),
        locations.map("images:{}".format),
    ),
    "s3_endpoint": st.sampled_from(
        ["http://minio:9000", "https://s3.example", "minio:9000", "ftp://x", "http://", "http://h/path", "http://[::1"]
    )
    | st.text(max_size=10),
    "epochz": scalars,
}
replicas = st.dictionaries(
    st.sampled_from(["chief", "workers", "ps", "evaluator", "gpus"]), st.integers(-2, 300) | scalars, max_size=4
)
toleration = st.dictionaries(
    st.sampled_from(["key", "operator", "value", "effect"]),
    st.sampled_from(["", "gpu", "Equal", "Exists", "NoSchedule", "Sometimes"]) | scalars,
)
role = st.fixed_dictionaries(
    {},
    optional={
        "resources": st.dictionaries(st.sampled_from(["cpu", "memory", "gpu", "disk"]), quantities, max_size=3),
        "node_selector": st.dictionaries(st.text(max_size=5), st.text(max_size=5) | scalars, max_size=2),
        "tolerations": st.lists(toleration, max_size=2) | scalars,
    },
)
jobs = st.fixed_dictionaries(
    {},
    optional={
        "name": names,
        "namespace": st.text(max_size=10) | scalars,
        "mode": st.sampled_from(["tfjob", "native", "kubeflow"]) | scalars,
        "image_pull_policy": st.sampled_from(["Always", "IfNotPresent", "Never", "Sometimes"]),
        "replicas": replicas | scalars,
        "trainer": st.fixed_dictionaries({}, optional=trainer_values) | scalars,
        "env": st.dictionaries(
            st.sampled_from(["TF_CONFIG", "A_B", "1BAD", "a.b-c", "", "X Y"]) | st.text(max_size=6),
            st.text(max_size=6) | scalars,
            max_size=3,
        ),
        "roles": st.dictionaries(st.sampled_from(["chief", "worker", "ps", "evaluator", "gpu"]), role, max_size=2),
        "credentials": st.fixed_dictionaries(
            {},
            optional={
                "secret": st.text(max_size=6) | scalars,
                "env": st.dictionaries(st.text(max_size=4), st.text(max_size=4)),
            },
        ),
        "service_account": st.fixed_dictionaries({}, optional={"create": st.booleans() | scalars, "name": names}),
        "policy": st.dictionaries(
            st.sampled_from(
                [
                    "restart_policy",
                    "backoff_limit",
                    "active_deadline_seconds",
                    "ttl_seconds_after_finished",
                    "clean_pod_policy",
                ]
            ),
            st.sampled_from(["ExitCode", "Never", "Always", "All"]) | st.integers(-1, 200) | scalars,
        ),
        "security": st.dictionaries(st.sampled_from(["run_as_user", "run_as_group"]), st.integers(-1, 2000) | scalars),
        "unexpected": scalars,
    },
)


def assert_valid(spec: JobSpec) -> None:
    """What every accepted spec guarantees to the back-ends and the chart."""
    assert DNS_1035.match(spec.name) and len(spec.name) <= MAX_NAME
    r = spec.replicas
    assert r.chief == 1 and 0 <= r.workers <= 256 and 0 <= r.ps <= 64 and r.evaluator in (0, 1)
    assert r.workers >= 1 or r.ps == 0
    assert "TF_CONFIG" not in spec.env and all(ENV_NAME.match(k) for k in spec.env)
    storage.parse(spec.model_dir)
    # What the chart gets loads back as the same job, and so does a plain dump.
    assert JobSpec.model_validate({**chart.values(spec), "namespace": spec.namespace}) == spec
    assert JobSpec.model_validate(spec.model_dump()) == spec


def assert_one_line(message: str, *fields: str) -> None:
    assert message and "\n" not in message and "\r" not in message, message
    assert any(f in message for f in fields), (message, fields)


@SETTINGS
@given(jobs)
def test_any_job_spec_is_valid_or_refused_in_one_line_naming_the_field(doc):
    try:
        spec = JobSpec.model_validate(doc)
    except ValidationError as err:
        first = err.errors()[0]
        assert_one_line(describe(err), str(first["loc"][0]) if first["loc"] else "job spec")
        return
    assert_valid(spec)
    if "model_dir" not in doc.get("trainer", {}):
        assert spec.model_dir == f"runs/{spec.name}"  # one folder per job unless told otherwise


flags = st.fixed_dictionaries(
    {},
    optional={
        "epochs": st.integers(1, 9),
        "batch_size": st.integers(1, 512),
        "neurons": st.integers(1, 64),
        "model": st.sampled_from(["mlp", "cnn"]),
    },
)


@SETTINGS
@given(
    file=st.one_of(jobs.map(yaml.safe_dump), st.text(max_size=60)),
    overrides=st.fixed_dictionaries(
        {
            "trainer": flags,
            "replicas": st.fixed_dictionaries({}, optional={"workers": st.integers(-1, 8), "ps": st.integers(-1, 4)}),
        },
        optional={"name": names, "namespace": st.text(max_size=8)},
    ),
)
def test_a_job_file_with_any_overrides_loads_with_the_overrides_winning_or_is_refused_in_one_line(
    tmp_path_factory, file, overrides
):
    path = tmp_path_factory.getbasetemp() / "job.yaml"
    path.write_text(file)
    try:
        spec = load(path, overrides)
    except BadInput as err:
        assert_one_line(str(err), str(path))
        return
    assert_valid(spec)
    assert all(getattr(spec.trainer, k) == v for k, v in overrides["trainer"].items())
    assert all(getattr(spec.replicas, k) == v for k, v in overrides["replicas"].items())
    assert spec.name == overrides.get("name", spec.name)


segments = st.sampled_from(["a", "runs", "b-1", "", ".", "..", " ", "x y", "é", "a:b", "?", "#"])
uris = st.one_of(
    st.text(max_size=30),
    st.builds(
        "{}://{}/{}".format,
        st.sampled_from(["gs", "s3", "gcs", "S3", "", "file", "http"]),
        st.one_of(
            st.from_regex(storage.BUCKET, fullmatch=True),
            st.text(max_size=10),
            st.sampled_from(["ab", "a..b", "-ab", "ab-", "My_Bucket", "a" * 64, "a" * 223]),
        ),
        st.lists(segments, max_size=5).map("/".join),
    ),
    st.builds("{}://{}".format, st.sampled_from(["gs", "s3"]), st.text(max_size=12)),
)


def assert_parsed(uri: str, location: storage.Location) -> None:
    assert storage.is_remote(uri) == ("://" in uri) == location.remote
    if not location.remote:
        assert location == storage.Location("", "", uri) and uri.strip()
        return
    assert location.scheme in storage.SCHEMES
    assert storage.BUCKET.match(location.bucket) and ".." not in location.bucket
    prefix = location.prefix
    assert not prefix.startswith("/") and not prefix.endswith("/") and "//" not in prefix
    assert not prefix or not {".", ".."} & set(prefix.split("/"))
    assert storage.parse(str(location)) == location  # normalised: parsing what it prints changes nothing


@SETTINGS
@given(uris)
def test_any_location_parses_into_a_valid_one_or_is_refused_in_one_line(uri):
    try:
        location = storage.parse(uri)
    except storage.StorageError as err:
        assert_one_line(str(err), "empty path" if not uri.strip() else f"{uri}: ", f"{uri!r}: ")
        return
    assert_parsed(uri, location)


buckets = st.from_regex(storage.BUCKET, fullmatch=True).filter(lambda b: ".." not in b)
valid_uris = st.builds(
    "{}://{}/{}".format,
    st.sampled_from(["gs", "s3"]),
    buckets,
    st.lists(st.text(string.ascii_lowercase + "-_", min_size=1, max_size=6), max_size=4).map("/".join),
)


@SETTINGS
@given(valid_uris, st.sampled_from(["", "/", "//"]))
def test_well_formed_locations_keep_their_bucket_and_path(uri, tail):
    location = storage.parse(uri + tail)
    scheme, _, rest = uri.partition("://")
    bucket, _, prefix = rest.partition("/")
    assert (location.scheme, location.bucket, location.prefix) == (scheme, bucket, prefix.strip("/"))
    assert location.key("ckpt") == (f"{location.prefix}/ckpt" if location.prefix else "ckpt")


endpoints = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "http://127.0.0.1:9000",
            "https://s3.example",
            "minio:9000",
            "ftp://h",
            "http://",
            "http://h/path",
            "http://[::1",
            "http://h:99999",
            "http://[::1]:9000",
            "https://h:-1",
        ]
    ),
    st.text(max_size=15),
)
credentials = st.fixed_dictionaries(
    {},
    optional={
        "AWS_ACCESS_KEY_ID": st.sampled_from(["", "key"]),
        "AWS_SECRET_ACCESS_KEY": st.sampled_from(["", "secret"]),
    },
)


@SETTINGS
@given(
    st.one_of(uris.filter(lambda u: not u.startswith("gs://")), valid_uris.map(lambda u: "s3" + u[2:])),
    endpoints,
    credentials,
)
def test_opening_a_store_checks_its_arguments_without_the_network(uri, endpoint, env):
    """S3 and local stores only: opening one builds a client, it does not connect."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        try:
            store = storage.open_store(uri, endpoint)
        except storage.StorageError as err:
            assert_one_line(str(err), "path", "scheme", "bucket", "endpoint", "AWS_", "location")
            return
    assert store.location == storage.parse(uri)
    assert_parsed(uri, store.location)
    if store.location.scheme == "s3":
        assert bool(env.get("AWS_ACCESS_KEY_ID")) == bool(env.get("AWS_SECRET_ACCESS_KEY"))


@SETTINGS
@given(st.fixed_dictionaries({}, optional=trainer_values))
def test_trainer_options_are_valid_or_refused_in_flag_spelling(values):
    """The trainer's flags go through the same model as a job's `trainer` section."""
    from pml_trainer.options import validated

    try:
        opts = validated(values)
    except BadInput as err:
        assert_one_line(str(err), "--", "epochz")
        return
    assert opts.epochs >= 1 and 0 <= opts.validation_split < 1 and opts.learning_rate > 0
    storage.parse(opts.model_dir)
    assert TrainOptions(**dict(opts.model_dump().items())) == opts
