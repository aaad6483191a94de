"""`pmlctl`: turn one job spec into a running job, then follow it.

Keep this module light: `pmlctl --help` must answer in well under a second, so nothing here
imports TensorFlow, and back-ends are imported inside the commands that use them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import pathlib
import sys
import time
import typing
from typing import Any, Optional

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from deploy import jobs, k8s
from deploy.spec import JobSpec, load
from trainer import storage
from trainer.options import BadInput, TrainOptions


class OneLineErrors(TyperGroup):
    """Usage errors (a misspelt option, a value of the wrong type) as one `error:` line, like
    every other refusal, instead of click's usage block."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as err:
            command = err.ctx.command_path if err.ctx else ctx.command_path
            typer.echo(f"error: {err.format_message().rstrip('.')}; see `{command} --help`", err=True)
            raise typer.Exit(err.exit_code) from None


app = typer.Typer(
    cls=OneLineErrors,
    help="Run distributed TensorFlow training locally, in Docker or on Kubernetes.\n\n"
    "Start with `pmlctl submit --workers 2 --ps 1 --epochs 3`: 1 chief, 2 workers and 1 "
    "parameter server as processes on this machine.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: 2]" and "parallel-ml[validate]" literally
)
TRAINER_PANEL = "Trainer flags (passed to every task)"


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"pmlctl {version('parallel-ml')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("pmlctl (not installed: no version)")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print pmlctl's version and exit.")) -> None:
    pass
def _known_target(value: Optional[str]) -> Optional[str]:
    if value not in (None, "local", "k8s"):
        raise typer.BadParameter(f"unknown target {value}; use local or k8s")
    return value


# Where the job-following commands look: a job started here wins unless a cluster is named.
TARGET = typer.Option(None, "--target", "-t", callback=_known_target,
                      help="local or k8s [default: where the job is found].")
CONTEXT = typer.Option(None, "--context", help="kubeconfig context of the cluster [default: the current one].")
NAMESPACE = typer.Option(None, "--namespace", "-n", help="Kubernetes namespace [default: the context's].")
WORKERS = typer.Option(None, "--workers", "-w", help="Worker tasks [default: 2].")
PS = typer.Option(None, "--ps", help="Parameter servers; 0 uses MultiWorkerMirroredStrategy [default: 1].")
EVALUATOR = typer.Option(None, "--evaluator/--no-evaluator", help="Add a sidecar evaluator.")
JOB_FILE = typer.Option(None, "--file", "-f", help="Job YAML file; flags override it.")
JOB_NAME = typer.Option(None, "--name", help="Job name [default: pml-<random>].")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line on stderr; the caller raises the returned Exit."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# Where pmlctl's default differs from the trainer's: each job gets a model dir of its own
# (JobSpec._model_dir_per_job).
PMLCTL_DEFAULTS = {"model_dir": "runs/<job name>"}


def with_trainer_flags(command):
    """Add every `TrainOptions` field to a command as an option, from the one definition.

    The command receives the flags the user actually gave as `trainer_flags`, a dict, so that a
    job file's values are overridden only by what was typed.
    """
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "trainer_flags"]
    extra = []
    for name, info in TrainOptions.model_fields.items():
        plain = next((t for t in typing.get_args(info.annotation) if t is not type(None)), info.annotation)
        kind = {bool: bool, int: int, float: float}.get(plain, str)
        option = "--" + name.replace("_", "-")
        if kind is bool:  # a switch both ways, so that a flag can turn off what a preset or file turned on
            option += f"/--no-{option[2:]}"
        default = PMLCTL_DEFAULTS.get(name, info.default)
        extra.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
            default=typer.Option(None, option, help=f"{info.description} [default: {default}]",
                                 rich_help_panel=TRAINER_PANEL, show_default=False)))

    @functools.wraps(command)
    def wrapper(**kwargs):
        given = {name: kwargs.pop(name) for name in TrainOptions.model_fields}
        return command(**kwargs, trainer_flags={k: v for k, v in given.items() if v is not None})

    wrapper.__signature__ = inspect.Signature(own + extra)
    return wrapper


PRESET = typer.Option(None, "--preset", help="The study's setups: fashion-mlp or flowers-cnn (a job file and flags override it).")


def build_spec(file: Optional[pathlib.Path], name: Optional[str], replicas: dict[str, Any],
               trainer_flags: dict[str, Any], preset_name: Optional[str] = None, **fields: Any) -> JobSpec:
    """The job from a preset (the study's setups), a job file and the flags, each over the last."""
    from deploy.presets import PRESETS

    if preset_name is not None and preset_name not in PRESETS:
        raise fail(f"--preset {preset_name}: unknown preset; use {' or '.join(PRESETS)}")
    overrides: dict[str, Any] = {"replicas": {k: v for k, v in replicas.items() if v is not None},
                                 "trainer": trainer_flags, **{k: v for k, v in fields.items() if v is not None}}
    if name:
        overrides["name"] = name
    try:
        return load(file, overrides, PRESETS.get(preset_name))
    except BadInput as err:
        raise fail(str(err)) from None


@app.command()
@with_trainer_flags
def submit(
    workers: Optional[int] = WORKERS,
    ps: Optional[int] = PS,
    evaluator: Optional[bool] = EVALUATOR,
    file: Optional[pathlib.Path] = JOB_FILE,
    name: Optional[str] = JOB_NAME,
    preset: Optional[str] = PRESET,
    target: str = typer.Option("local", "--target", "-t", help="Where to run: local (processes on this machine), docker (containers of --image, see `pmlctl image build`) or k8s (the kubeconfig's cluster)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cluster, commands and environment (k8s: the objects); start nothing."),
    context: Optional[str] = CONTEXT,
    namespace: Optional[str] = NAMESPACE,
    image: Optional[str] = typer.Option(None, "--image", help="Trainer image (docker, k8s) [default: parallel-ml:latest]."),
    mode: str = typer.Option("auto", "--mode", help="k8s: tfjob, native, or auto (tfjob where the Training Operator is installed)."),
    replace: bool = typer.Option(False, "--replace", help="k8s: delete a job of the same name first."),
    wait: bool = typer.Option(False, "--wait", help="k8s: follow the job to its end and exit 0 (success), 1 (failure) or 2 (--timeout)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="k8s with --wait: give up after this many seconds."),
    crd: Optional[pathlib.Path] = typer.Option(None, "--crd", help="k8s: TFJob CRD file to validate against [default: the one the cluster serves]."),
    max_restarts: int = typer.Option(6, "--max-restarts", min=0, help="Restarts of failed tasks before the job fails."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show TensorFlow's own log lines."),
    trainer_flags: dict = None,
):
    """Run a training job and stream its logs; exit with the chief's exit code.

    Tasks that die with a retryable code (killed, preempted, lost a peer) are restarted at the
    same address, and the chief resumes from its latest checkpoint. Ctrl-C stops every task.

    Example: pmlctl submit --workers 6 --ps 3 --epochs 5
    """
    replicas = {"workers": workers, "ps": ps, "evaluator": None if evaluator is None else int(evaluator)}
    spec = build_spec(file, name, replicas, trainer_flags, preset, namespace=namespace, image=image)
    _same_run(spec, target)
    if target != "k8s":  # a pod's paths are not this machine's
        _data_ready(spec)
    if target == "k8s":
        from deploy.k8s import target as kube

        raise typer.Exit(_guarded(kube.submit, spec, mode=mode, context=context, crd=crd, replace=replace,
                                  wait_for_end=wait, timeout=timeout, dry_run=dry_run))
    if target not in ("local", "docker"):
        raise fail(f"--target {target}: unknown target; use local, docker or k8s")
    backend = importlib.import_module(f"deploy.{target}")  # local and docker share the supervisor

    job_dir = jobs.job_dir(spec.name)
    state = jobs.read_state(spec.name)
    if state and state["status"] == "running" and _alive(state.get("supervisor_pid")):
        raise fail(f"job {spec.name} is already running; pick another --name or `pmlctl delete {spec.name}`")
    p = backend.plan(spec, job_dir)
    if dry_run:
        typer.echo(backend.describe(p))
        return
    try:
        code = backend.Supervisor(p, job_dir, max_restarts, verbose).run()
    except BadInput as err:  # e.g. no Docker daemon
        raise fail(str(err)) from None
    typer.echo(f"job {spec.name} {'succeeded' if code == 0 else f'failed (exit code {code})'}; "
               f"model dir {storage.absolute(spec.model_dir)}", err=code != 0)
    raise typer.Exit(code)


def _same_run(spec: JobSpec, target: str) -> None:
    """Refuse, before any task starts, a model dir that holds another run (a job file's name fixes
    runs/<name>, so reusing one is easy). The chief checks again when it starts, so where this
    machine cannot read the model dir the job goes ahead: with a note when the storage client is
    not installed here, quietly when the storage does not answer this machine (the tasks may have
    other credentials and another network; a local job's chief reports what is wrong)."""
    from trainer import fingerprint

    opts = spec.trainer
    if not storage.is_remote(opts.model_dir) and target == "k8s":
        return  # a path on the pods' volume, not on this machine
    endpoint = opts.s3_endpoint or spec.env.get("AWS_ENDPOINT_URL")
    try:
        note = fingerprint.admit(opts.model_copy(update={"s3_endpoint": endpoint}), may_discard=False, patient=False)
    except fingerprint.Mismatch as err:
        raise fail(str(err)) from None
    except storage.StorageError as err:
        if storage.INSTALL_HINT not in str(err):
            return
        note = f"the model dir's {fingerprint.FILE} is not checked here ({err}); the chief checks it when it starts"
    if note:
        typer.echo(f"note: {note}", err=True)


def _data_ready(spec: JobSpec) -> None:
    """A local dataset that is not what it claims to be is refused here, before any task starts:
    the chief would otherwise find out after the whole cluster is up."""
    from trainer import datacheck, exits

    try:
        datacheck.check(spec.trainer.dataset, spec.trainer.data_dir)
    except datacheck.BadData as err:
        raise fail(str(err), exits.DATA_UNAVAILABLE) from None


def _data_ready(spec: JobSpec) -> None:
    """A local dataset that is not what it claims to be is refused here, before any task starts:
    the chief would otherwise find out after the whole cluster is up."""
    from trainer import datacheck, exits

    try:
        datacheck.check(spec.trainer.dataset, spec.trainer.data_dir)
    except datacheck.BadData as err:
        raise fail(str(err), exits.DATA_UNAVAILABLE) from None


@app.command()
def status(name: str = typer.Argument(..., help="Job name."),
           output: str = typer.Option("table", "--output", "-o", help="table or json."),
           target: Optional[str] = TARGET, context: Optional[str] = CONTEXT, namespace: Optional[str] = NAMESPACE):
    """A job's state, and each task's process (or pod), restarts and exit code."""
    if k8s.selected(target, context, namespace, name):
        from deploy.k8s import target as kube

        return _guarded(k8s.run, lambda api, ns: kube.status(api, ns, name, output), context, namespace)
    state = _state(name)
    if output == "json":
        typer.echo(json.dumps(state, indent=2))
        return
    typer.echo(f"job {state['name']}: {state['status']} ({state['target']}), model dir {state['model_dir']}")
    typer.echo(f"{'TASK':<12} {'ADDRESS':<18} {'PID':>7} {'RESTARTS':>8} {'EXIT':>5}  ENDED")
    for t in state["tasks"]:
        exit_code = "" if t["exit_code"] is None else t["exit_code"]
        typer.echo(f"{t['role'] + '-' + str(t['index']):<12} {t['address']:<18} {t['pid'] or '':>7} "
                   f"{t['restarts']:>8} {exit_code:>5}  {t['ended']}")


@app.command()
def logs(name: str = typer.Argument(..., help="Job name."),
         role: str = typer.Option("chief", "--role", help="chief, worker, ps or evaluator."),
         index: int = typer.Option(0, "--index", help="Which task of the role."),
         follow: bool = typer.Option(False, "--follow", "-f", help="k8s: keep printing until the task ends."),
         target: Optional[str] = TARGET, context: Optional[str] = CONTEXT, namespace: Optional[str] = NAMESPACE):
    """Print one task's log (the chief's by default)."""
    if k8s.selected(target, context, namespace, name):
        from deploy.k8s import target as kube

        return _guarded(k8s.run, lambda api, ns: kube.logs(api, ns, name, role, index, follow), context, namespace)
    state = _state(name)
    task = next((t for t in state["tasks"] if t["role"] == role and t["index"] == index), None)
    if task is None:
        names = ", ".join(f"--role {t['role']} --index {t['index']}" for t in state["tasks"])
        raise fail(f"job {name} has no {role} {index}; it has {names}")
    sys.stdout.write(pathlib.Path(task["log"]).read_text(errors="replace"))


@app.command("list")
def list_jobs(target: Optional[str] = TARGET, context: Optional[str] = CONTEXT, namespace: Optional[str] = NAMESPACE):
    """The jobs started from this machine, or with -t k8s those in a namespace, with their state."""
    if k8s.selected(target, context, namespace):
        from deploy.k8s import target as kube

        return _guarded(k8s.run, kube.list_jobs, context, namespace)
    states = jobs.all_states()
    if not states:
        typer.echo("no jobs yet: start one with `pmlctl submit`")
        return
    typer.echo(f"{'NAME':<24} {'TARGET':<8} {'STATUS':<12} TASKS")
    for s in states:
        typer.echo(f"{s['name']:<24} {s['target']:<8} {s['status']:<12} {len(s['tasks'])}")


@app.command()
def delete(name: str = typer.Argument(..., help="Job name."),
           target: Optional[str] = TARGET, context: Optional[str] = CONTEXT, namespace: Optional[str] = NAMESPACE):
    """Stop a job if it still runs, and forget it (k8s: delete every object it made).
    A job that does not exist is not an error."""
    import shutil
    import signal
    import os

    if k8s.selected(target, context, namespace, name):
        from deploy.k8s import target as kube

        return _guarded(k8s.run, lambda api, ns: kube.delete(api, ns, name), context, namespace)
    state = jobs.read_state(name)
    if state is None:
        typer.echo(f"job {name} not found; nothing to delete")
        return
    if state["status"] == "running" and _alive(state.get("supervisor_pid")):
        os.kill(state["supervisor_pid"], signal.SIGTERM)  # the supervisor stops its tasks
    if state["target"] == "docker":
        from deploy import docker
        try:
            docker.delete(name, lambda: _alive(state.get("supervisor_pid")))
        except BadInput as err:
            raise fail(str(err)) from None
    shutil.rmtree(jobs.job_dir(name), ignore_errors=True)
    typer.echo(f"job {name} deleted (its model dir {state['model_dir']} is kept)")


@app.command()
def wait(name: str = typer.Argument(..., help="Job name."),
         timeout: Optional[float] = typer.Option(None, "--timeout", help="Give up after this many seconds."),
         target: Optional[str] = TARGET, context: Optional[str] = CONTEXT, namespace: Optional[str] = NAMESPACE):
    """Wait for a job to end: exit 0 on success, 1 on failure, 2 on timeout."""
    import time

    if k8s.selected(target, context, namespace, name):
        from deploy.k8s import target as kube

        raise typer.Exit(_guarded(k8s.run, lambda api, ns: kube.wait(api, ns, name, timeout), context, namespace))
    deadline = None if timeout is None else time.monotonic() + timeout
    while (state := _state(name))["status"] == "running" and _alive(state.get("supervisor_pid")):
        if deadline is not None and time.monotonic() > deadline:
            raise fail(f"job {name} still running after {timeout:g}s; wait longer with --timeout")
        time.sleep(0.5)
    raise typer.Exit(0 if state["status"] == "succeeded" else 1)


def _guarded(action, *args, **kwargs):
    """Run a Kubernetes action; its one-line errors become `error: ...` and exit code 2."""
    try:
        return action(*args, **kwargs)
    except BadInput as err:
        raise fail(str(err)) from None


def _state(name: str) -> dict:
    state = jobs.read_state(name)
    if state is None:
        raise fail(f"job {name} not found; `pmlctl list` shows the known jobs")
    return state


def _alive(pid: Optional[int]) -> bool:
    import os

    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


@app.command()
@with_trainer_flags
def render(
    workers: Optional[int] = WORKERS,
    ps: Optional[int] = PS,
    evaluator: Optional[bool] = EVALUATOR,
    file: Optional[pathlib.Path] = JOB_FILE,
    name: Optional[str] = JOB_NAME,
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Kubernetes namespace [default: default]."),
    image: Optional[str] = typer.Option(None, "--image", help="Trainer image [default: parallel-ml:latest]."),
    mode: Optional[str] = typer.Option(None, "--mode", help="tfjob (Kubeflow Training Operator) or native (plain Jobs and Services) [default: tfjob]."),
    output: Optional[pathlib.Path] = typer.Option(None, "--output", "-o", help="Write the manifest to this file instead of stdout."),
    values: bool = typer.Option(False, "--values", help="Print the chart's values instead, for `helm install -f`."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check every object before printing it (needs parallel-ml[validate])."),
    crd: Optional[pathlib.Path] = typer.Option(None, "--crd", envvar="PML_TFJOB_CRD", help="TFJob CRD file (kubeflow.org_tfjobs.yaml) to check the TFJob against."),
    kube_version: Optional[str] = typer.Option(None, "--kube-version", help="Kubernetes version whose schemas every object must pass [default: 1.30]."),
    trainer_flags: dict = None,
):
    """Render the job for Kubernetes through the Helm chart, and check every object.

    The output is what `helm template` prints for the same values.

    Example: pmlctl render --mode native --workers 6 --ps 3 -o job.yaml
    """
    from deploy import render as rendering

    given = {"name": name, "namespace": namespace, "image": image, "mode": mode}
    replicas = {"workers": workers, "ps": ps, "evaluator": None if evaluator is None else int(evaluator)}
    overrides = {**{k: v for k, v in given.items() if v is not None},
                 "replicas": {k: v for k, v in replicas.items() if v is not None}, "trainer": trainer_flags}
    try:
        spec = load(file, overrides)
        result = (rendering.Rendered(rendering.values_yaml(spec)) if values else
                  rendering.render(spec, validate=validate, crd=crd, kube_version=kube_version))
    except BadInput as err:
        raise fail(str(err)) from None
    if output is not None:
        try:
            output.write_text(result.manifest)
        except OSError as err:
            raise fail(f"--output {output}: cannot write it ({err.strerror}); give a file in an existing folder") from None
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    if output is None:
        typer.echo(result.manifest, nl=False)
    else:
        typer.echo(f"wrote {output}", err=True)


image_app = typer.Typer(help="Build and push the trainer image; each command prints the docker command it runs.",
                        no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    tag: Optional[str] = typer.Option(None, "--tag", help="Image tag [default: parallel-ml:latest; parallel-ml:latest-gpu with --gpu]."),
    gpu: bool = typer.Option(False, "--gpu", help="TensorFlow with its CUDA libraries instead of the CPU build."),
    base: Optional[str] = typer.Option(None, "--base", envvar="PML_BASE_IMAGE", help="Base image: Python 3.11 on Debian, or plain Debian 12 [default: python:3.11-slim]."),
    ca_bundle: Optional[pathlib.Path] = typer.Option(None, "--ca-bundle", envvar="PML_CA_BUNDLE", help="CA certificates (PEM) for pip, e.g. behind a TLS-intercepting proxy."),
    context: pathlib.Path = typer.Option(pathlib.Path("."), "--context", help="The parallel-ml checkout holding the Dockerfile."),
):
    """Build the trainer image with `docker build` (BuildKit) from the Dockerfile.

    Example: pmlctl image build --base local/debian:bookworm --ca-bundle /etc/ssl/certs/ca-certificates.crt
    """
    from deploy import image

    try:
        argv = image.build_command(context, tag or (image.GPU_TAG if gpu else image.DEFAULT_TAG), gpu, base, ca_bundle)
        code = image.run(argv)
    except BadInput as err:
        raise fail(str(err)) from None
    raise typer.Exit(code)


@image_app.command("push")
def image_push(tag: str = typer.Option("parallel-ml:latest", "--tag", help="Image to push; its name says the registry.")):
    """Push the image with `docker push` (log in first with `docker login REGISTRY`)."""
    from deploy import image

    try:
        code = image.run(image.push_command(tag))
    except BadInput as err:
        raise fail(str(err)) from None
    raise typer.Exit(code)


cluster_app = typer.Typer(help="A local kind cluster for --target k8s: Training Operator, MinIO, the trainer image.",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
CLUSTER_NAME = typer.Option("pml", "--name", help="kind cluster name (its context is kind-NAME).")


@cluster_app.command("up")
def cluster_up(name: str = CLUSTER_NAME,
               image: str = typer.Option("parallel-ml:latest", "--image", help="Trainer image to build and load."),
               rebuild: bool = typer.Option(False, "--rebuild", help="Build the image even if it exists.")):
    """Create the cluster and install what jobs need; steps already done are skipped."""
    from deploy import cluster

    _guarded(cluster.up, name, image, rebuild)


@cluster_app.command("down")
def cluster_down(name: str = CLUSTER_NAME):
    """Delete the kind cluster."""
    from deploy import cluster

    _guarded(cluster.down, name)


@app.command()
def artifacts(
    job: str = typer.Argument(..., help="Job name, or a model dir: a folder, gs://BUCKET/PATH or s3://BUCKET/PATH."),
    s3_endpoint: Optional[str] = typer.Option(None, "--s3-endpoint", help="S3 service for s3:// [default: AWS_ENDPOINT_URL, else AWS]."),
):
    """List what a job wrote: checkpoints (the latest marked), metrics, TensorBoard events, SavedModel.

    Example: pmlctl artifacts s3://models/run1 --s3-endpoint http://127.0.0.1:9000
    """
    from deploy import artifacts as listing

    location = job
    if not storage.is_remote(job) and not pathlib.Path(job).is_dir():
        state = _state(job)
        location, s3_endpoint = state["model_dir"], s3_endpoint or state.get("s3_endpoint")
    try:
        storage.parse(location)
    except storage.StorageError as err:  # a malformed location is bad input, not an unavailable one
        raise fail(str(err)) from None
    try:
        typer.echo(listing.table(location, s3_endpoint))
    except storage.StorageError as err:
        raise fail(str(err), code=3) from None


def _experiment_output(out: Optional[pathlib.Path], kind: str) -> pathlib.Path:
    return out or pathlib.Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_experiment(run, out_dir: pathlib.Path, stem: str) -> None:
    """Run an experiment (a function giving its tables), print the tables and write the files."""
    from deploy import experiments

    if importlib.util.find_spec("matplotlib") is None:  # find out before hours of runs, not after
        raise fail("plots need matplotlib: pip install 'parallel-ml[experiments]'")
    try:
        tables = run()
    except BadInput as err:
        raise fail(str(err)) from None
    except experiments.RunFailed as err:
        raise fail(str(err), code=1) from None
    for table in tables:
        typer.echo(f"\n{table.title}\n{experiments.render(table)}")
    paths = experiments.write(tables, out_dir, stem)
    typer.echo("\nwrote " + ", ".join(str(p) for p in paths))


@app.command()
@with_trainer_flags
def sweep(
    param: list[str] = typer.Option(..., "--param", help="NAME=V1,V2,...: a trainer flag, or cores (CPUs and thread pools). Repeat it to sweep several, one at a time."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Runs per value; the table shows their mean and spread."),
    workers: int = typer.Option(0, "--workers", "-w", help="Workers of every run (0: one process)."),
    ps: int = typer.Option(0, "--ps", help="Parameter servers of every run."),
    preset: Optional[str] = PRESET,
    file: Optional[pathlib.Path] = JOB_FILE,
    out: Optional[pathlib.Path] = typer.Option(None, "--out", "-o", help="Folder for sweep.json, sweep.csv, sweep.png and the runs [default: runs/sweep-<time>]."),
    trainer_flags: dict = None,
):
    """Train once per value of a parameter, everything else held fixed, and tabulate the results.

    For each value: loss, accuracy, validation accuracy, training time and examples/s, as the
    mean over --repeats with the spread, and as a percentage of the first value, as in the
    study's tables. Writes sweep.json, sweep.csv and sweep.png (time and accuracy against the
    parameter) and prints the table. Runs are local jobs, one after another.

    Example: pmlctl sweep --param neurons=32,128,256,512 --param cores=1,2 --epochs 5 --repeats 3
    """
    from deploy import experiments

    spec = build_spec(file, None, {"workers": workers, "ps": ps, "evaluator": 0}, trainer_flags, preset)
    out_dir = _experiment_output(out, "sweep")
    _run_experiment(lambda: experiments.sweep(spec, param, repeats, out_dir), out_dir, "sweep")


@app.command()
@with_trainer_flags
def compare(
    shape: list[str] = typer.Option(..., "--shape", help="WORKERSxPS of a cluster to run, e.g. 2x1 or 6x3 (always with 1 chief). Repeat it."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Runs per shape; the table shows their mean and spread."),
    preset: Optional[str] = PRESET,
    file: Optional[pathlib.Path] = JOB_FILE,
    out: Optional[pathlib.Path] = typer.Option(None, "--out", "-o", help="Folder for compare.json, compare.csv, compare.png and the runs [default: runs/compare-<time>]."),
    trainer_flags: dict = None,
):
    """Run the same job as one process (the baseline) and as cluster shapes, and compare them.

    Prints the study's distributed table: loss and time as a percentage of the single process,
    with examples/s and the speed-up (baseline time / time). Writes compare.json, compare.csv and
    compare.png (a bar chart). Runs are local jobs, one after another.

    Example: pmlctl compare --shape 2x1 --shape 6x3 --epochs 3 --repeats 2
    """
    from deploy import experiments

    spec = build_spec(file, None, {"evaluator": 0}, trainer_flags, preset)
    out_dir = _experiment_output(out, "compare")
    _run_experiment(lambda: [experiments.compare(spec, shape, repeats, out_dir)], out_dir, "compare")


def main() -> None:
    app()
