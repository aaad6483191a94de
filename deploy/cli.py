"""`pmlctl`: turn one job spec into a running job, then follow it.

Every job command is the same pipeline: flags -> `JobSpec` -> the target the one rule picks
(deploy/registry.py) -> a call of the target contract (deploy/target.py) -> the one view
(deploy/view.py). Nothing here knows a target by name; each target's own flags are added to the
commands from what it declares. A refusal anywhere is a `BadInput` (exit 2: fix the input), a
service that does not answer an `Unavailable` (exit 3: try again later), and `OneLineErrors` turns
either into the one `error:` line.

Keep this module light: `pmlctl --help` must answer in well under a second, so nothing here
imports TensorFlow, and heavy back-ends are imported inside the commands that use them.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import pathlib
import time
import typing
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from deploy import jobs, registry, view
from deploy.spec import JobSpec, load
from deploy.target import Note, Target
from pml_trainer import storage
from pml_trainer.errors import BadInput, Unavailable
from pml_trainer.log import configure_for_cli
from pml_trainer.options import PARAM_FLAG, TrainOptions

# The usage errors of the click that typer runs on: click's own up to typer 0.25, the copy typer
# vendors as the private typer._click from 0.26 on (so click's classes would never match there).
# typer.BadParameter is public in both, and is a UsageError.
UsageError = typer.BadParameter.__mro__[1]


class OneLineErrors(TyperGroup):
    """Usage errors (a misspelt option, a value of the wrong type), every `BadInput` and every
    `Unavailable` as one `error:` line, instead of click's usage block or a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as err:
            # A group without its command shows its help: that is an answer, not an error. Known by
            # its name as typer itself tells it (typer/rich_utils.py, rich_format_error), since
            # click before 8.2 has no such class.
            if type(err).__name__ == "NoArgsIsHelpError":
                raise
            command = err.ctx.command_path if err.ctx else ctx.command_path
            typer.echo(f"error: {err.format_message().rstrip('.')}; see `{command} --help`", err=True)
            raise typer.Exit(err.exit_code) from None
        except (BadInput, Unavailable) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None


class Sections(TyperCommand):
    """--help with the options in sections: the command's own, each target's, the trainer's."""

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                # --help itself is click's Option, which has rich_help_panel only where typer vendors click
                panel = getattr(param, "rich_help_panel", None)
                title = "Arguments" if param.param_type_name == "argument" else panel or "Options"
                sections.setdefault(title, []).append(record)
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)


app = typer.Typer(
    cls=OneLineErrors,
    help="Run distributed TensorFlow training locally, in Docker or on Kubernetes.\n\n"
    "Start with `pmlctl submit --workers 2 --ps 1 --epochs 3`: 1 chief, 2 workers and 1 "
    "parameter server as processes on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: 2]" and "parallel-ml[validate]" literally
)
command = functools.partial(app.command, cls=Sections)
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
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print pmlctl's version and exit."
    ),
) -> None:
    pass


WORKERS = typer.Option(None, "--workers", "-w", help="Worker tasks [default: 2].")
PS = typer.Option(None, "--ps", help="Parameter servers; 0 uses MultiWorkerMirroredStrategy [default: 1].")
EVALUATOR = typer.Option(None, "--evaluator/--no-evaluator", help="Add a sidecar evaluator.")
JOB_FILE = typer.Option(None, "--file", "-f", help="Job YAML file; flags override it.")
JOB_NAME = typer.Option(None, "--name", help="Job name [default: pml-<random>].")
JOB = typer.Argument(..., help="Job name.")
OUTPUT = typer.Option("table", "--output", "-o", help="table or json.")
PRESET = typer.Option(
    None, "--preset", help="The study's setups: fashion-mlp or flowers-cnn (a job file and flags override it)."
)

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
        kind: Any = {bool: bool, int: int, float: float}.get(plain, str)
        option = "--" + name.replace("_", "-")
        if name == "params":  # KEY=VALUE, repeatable: the trainer's own spelling
            kind, option = list[str], PARAM_FLAG
        if kind is bool:  # a switch both ways, so that a flag can turn off what a preset or file turned on
            option += f"/--no-{option[2:]}"
        default = PMLCTL_DEFAULTS.get(name, info.default)
        extra.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=kind | None,
                default=typer.Option(
                    None,
                    option,
                    help=info.description if name == "params" else f"{info.description} [default: {default}]",
                    rich_help_panel=TRAINER_PANEL,
                    show_default=False,
                ),
            )
        )

    @functools.wraps(command)
    def wrapper(**kwargs):
        given = {name: kwargs.pop(name) for name in TrainOptions.model_fields}
        if given["params"] is not None:
            given["params"] = _params(given["params"])
        return command(**kwargs, trainer_flags={k: v for k, v in given.items() if v is not None})

    wrapper.__signature__ = inspect.Signature(own + extra)
    return wrapper


def _params(items: list[str]) -> dict[str, Any] | None:
    """--task-param KEY=VALUE flags as the dict they stand for; None when none was given."""
    from pml_trainer.options import param

    try:
        return dict(param(item) for item in items) or None
    except ValueError as err:
        raise BadInput(str(err)) from None


class WithTargets:
    """A command with `--target` and the flags every registered target declares for it.

    Its signature is computed each time the CLI is built, not once at import: a target registered
    later (a plugin's, a test's) gets its flags and its --help section too. The command receives
    `target` (or None) and `target_options`, the target flags the user gave.
    """

    def __init__(self, name: str, function):
        self.name, self.function = name, function
        self.__name__, self.__doc__, self.__module__ = function.__name__, function.__doc__, function.__module__
        own = [p for p in inspect.signature(function).parameters.values() if p.name not in ("target", "target_options")]
        self._trainer = [p for p in own if p.name in TrainOptions.model_fields]  # last in --help: the longest section
        self._own = [p for p in own if p not in self._trainer]
        self._hints = {
            k: v for k, v in typing.get_type_hints(function).items() if k not in ("target", "target_options")
        }

    def _extra(self) -> list[inspect.Parameter]:
        return _target_parameters(self.name, tuple(registry.TARGETS.items()), tuple(registry.names()))

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.Signature(self._own + self._extra() + self._trainer)

    @property
    def __annotations__(self) -> dict[str, Any]:  # typer resolves each parameter's type from these
        return {**self._hints, **{p.name: p.annotation for p in self._extra()}}

    def __call__(self, **kwargs):
        target = kwargs.pop("target")
        given = {option.key: kwargs.pop(option.key) for option, _ in registry.options(self.name)}
        return self.function(**kwargs, target=target, target_options={k: v for k, v in given.items() if v is not None})


@functools.cache
def _target_parameters(command_name: str, registered: tuple, named: tuple) -> list[inspect.Parameter]:
    """`--target` and the target flags of a command, for the `registered` targets and those `named`
    by entry points (the cache key: typer asks for a command's signature several times while it
    builds the CLI)."""
    targets = "; ".join(f"{n}, {registry.load(n).summary}" for n in registry.names())
    where = (
        "local, unless --context/-n or the job's name on this machine say otherwise"
        if command_name == "submit"
        else "where --context/-n say, else where the job's name is found"
    )
    extra = [
        inspect.Parameter(
            "target",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str | None,
            default=typer.Option(
                None,
                "--target",
                "-t",
                callback=_known_target,
                help=f"Where: {targets}. [default: {where}]",
                show_default=False,
            ),
        )
    ]
    for option, owners in registry.options(command_name):
        flag = f"--{option.name}" + (f"/--no-{option.name}" if option.type is bool else "")
        shown = "" if option.default is None else f" [default: {option.default}]"
        extra.append(
            inspect.Parameter(
                option.key,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=option.type | None,
                default=typer.Option(
                    None,
                    flag,
                    *filter(None, [option.short]),
                    help=option.help + shown,
                    min=option.minimum,
                    show_default=False,
                    rich_help_panel=f"Options of -t {' and -t '.join(owners)}",
                ),
            )
        )
    return extra


def with_targets(name: str):
    return lambda function: WithTargets(name, function)


def _known_target(value: str | None) -> str | None:
    if value is not None and value not in registry.names():
        raise typer.BadParameter(str(registry.unknown(value)))
    return value


def _settings(cls: type[Target], command_name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The target's options for a command: what was given, else the target's defaults."""
    return {o.key: given.get(o.key, o.default) for o in cls.options if command_name in o.commands}


def _job(
    command_name: str, name: str, target: str | None, given: dict[str, Any], phases: bool = True
) -> tuple[Target, Any]:
    """The target a command about job `name` goes to, and the job's handle there."""
    if target is None and command_name != "delete":  # deleting a job that is nowhere is done already
        nowhere = registry.found_nowhere(command_name, given, name)
        if nowhere:
            raise BadInput(nowhere)
    cls = registry.choose(command_name, target, given, name)
    chosen = cls(functools.partial(view.event, phases=phases))
    return chosen, chosen.handle(name, _settings(cls, command_name, given))


def build_spec(
    file: pathlib.Path | None,
    name: str | None,
    replicas: dict[str, Any],
    trainer_flags: dict[str, Any],
    preset_name: str | None = None,
    **fields: Any,
) -> JobSpec:
    """The job from a preset (the study's setups), a job file and the flags, each over the last,
    with its task module's workspace found (deploy/workspaces.py)."""
    from deploy import workspaces
    from deploy.presets import PRESETS

    if preset_name is not None and preset_name not in PRESETS:
        raise BadInput(f"--preset {preset_name}: unknown preset; use {' or '.join(PRESETS)}")
    overrides: dict[str, Any] = {
        "replicas": {k: v for k, v in replicas.items() if v is not None},
        "trainer": trainer_flags,
        **{k: v for k, v in fields.items() if v is not None},
    }
    if name:
        overrides["name"] = name
    return workspaces.resolve(load(file, overrides, PRESETS.get(preset_name)), trainer_flags, file)


def _replicas(workers: int | None, ps: int | None, evaluator: bool | None) -> dict[str, int | None]:
    return {"workers": workers, "ps": ps, "evaluator": None if evaluator is None else int(evaluator)}


@command()
@with_targets("submit")
@with_trainer_flags
def submit(
    workers: int | None = WORKERS,
    ps: int | None = PS,
    evaluator: bool | None = EVALUATOR,
    file: pathlib.Path | None = JOB_FILE,
    name: str | None = JOB_NAME,
    preset: str | None = PRESET,
    image: str | None = typer.Option(
        None, "--image", help="Trainer image (docker, k8s) [default: parallel-ml:latest]."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print what would run (the processes, the containers or the objects); start nothing."
    ),
    wait: bool = typer.Option(
        False,
        "--wait",
        help="Follow the job to its end and exit 0 (success), 1 (failure) or 2 (--timeout); local and docker jobs always are followed, and exit with the chief's code.",
    ),
    timeout: float | None = typer.Option(None, "--timeout", help="With --wait: give up after this many seconds."),
    trainer_flags: dict | None = None,
    target: str | None = None,
    target_options: dict | None = None,
):
    """Run a training job; on this machine, stream its logs and exit with the chief's exit code.

    Tasks that die with a retryable code (killed, preempted, lost a peer) are restarted at the
    same address, and the chief resumes from its latest checkpoint. Ctrl-C stops every task.

    \b
    Example:
      pmlctl submit --workers 6 --ps 3 --epochs 5
    """
    spec = build_spec(file, name, _replicas(workers, ps, evaluator), trainer_flags, preset, image=image)
    cls = registry.choose("submit", target, target_options, spec.name)
    if cls.attached and timeout is not None:
        raise BadInput(f"--timeout: a -t {cls.name} job runs as long as `pmlctl submit` does; stop it with Ctrl-C")
    if cls.sees_local_files or storage.is_remote(spec.model_dir):  # a path on a pod's volume is not this machine's
        _same_run(spec)
    if cls.sees_local_files:
        _data_ready(spec)
    chosen = cls(functools.partial(view.event, phases=not cls.attached))  # an attached job's output says it
    planned = chosen.plan(spec, _settings(cls, "submit", target_options))
    if dry_run:
        view.plan(planned)
        return
    handle = chosen.submit(planned)
    if cls.attached:
        view.logs(chosen.logs(handle, None, 0, follow=True))
    else:
        view.submitted(handle)
        if not wait:
            return
    outcome = chosen.wait(handle, timeout)
    view.outcome(outcome)
    raise typer.Exit(outcome.code if outcome.exit_code is None else outcome.exit_code)


@command()
@with_trainer_flags
def check(
    target: str | None = typer.Option(
        None,
        "--target",
        "-t",
        help="local: this Python, whose packages a local job imports; docker: the image a docker job runs (with --task, its task image, built FROM --image). [default: local]",
        show_default=False,
    ),
    file: pathlib.Path | None = JOB_FILE,
    preset: str | None = PRESET,
    image: str | None = typer.Option(None, "--image", help="Trainer image (docker) [default: parallel-ml:latest]."),
    output: str = OUTPUT,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show TensorFlow's own log lines."),
    trainer_flags: dict | None = None,
):
    """Try a task once before a job runs it: build its model, take one batch, train one step, export.

    It runs in the job's own environment, this Python or the image, and prints what it found: the
    batch's shapes and the model's outputs, the loss on the batch before and after the step, the
    metric names, the SavedModel's serving signature, and the seconds it took. A task that fails
    shows its own frames and one error line, with exit code 2. Nothing is written to the model dir.

    \b
    Example:
      pmlctl check --task task.py --task-param units=64
    """
    from deploy import check as checking

    spec = build_spec(file, None, {}, trainer_flags, preset, image=image)
    raise typer.Exit(checking.run(spec, target, output, verbose))


@command()
@with_trainer_flags
def plan(
    workers: str = typer.Option(
        "0..16", "--workers", "-w", help="Workers to plan for: a range (1..16) or a list (1,2,4); 0 is one process."
    ),
    ps: str = typer.Option(
        "0..4", "--ps", help="Parameter servers to plan for; 0 is mirrored workers (the chief trains too)."
    ),
    file: pathlib.Path | None = JOB_FILE,
    name: str | None = JOB_NAME,
    preset: str | None = PRESET,
    machine: list[str] = typer.Option(
        [],
        "--machine",
        "-m",
        help="Machine type of the workers (repeat it to compare) [default: every GKE type in the table].",
    ),
    ps_machine: str | None = typer.Option(None, "--ps-machine", help="Machine type of the ps [default: the workers']."),
    chief_machine: str | None = typer.Option(
        None, "--chief-machine", help="Machine type of the chief [default: the workers']."
    ),
    machines_file: pathlib.Path | None = typer.Option(
        None,
        "--machines",
        help="YAML file of machines to add to the table, or figures to replace (deploy/machines.yaml's form).",
    ),
    settings: list[str] = typer.Option(
        [], "--set", help="Override one figure: MACHINE.FIELD=VALUE, e.g. n2-standard-8.egress_gbps=4. Repeatable."
    ),
    goal: str | None = typer.Option(
        None, "--goal", help="fastest or cheapest (--deadline and --budget are goals of their own).  [default: fastest]"
    ),
    deadline: str | None = typer.Option(
        None, "--deadline", help="The cheapest shape that trains within this time, e.g. 2h."
    ),
    budget: str | None = typer.Option(None, "--budget", help="The fastest shape that costs at most this, e.g. 20usd."),
    spot: bool = typer.Option(
        False, "--spot", help="Price the workers at Spot rates (the chief and ps stay on standard VMs)."
    ),
    rtt: float = typer.Option(0.0002, "--rtt", min=0.0, max=10.0, help="Round trip between two machines, in seconds."),
    calibration: pathlib.Path | None = typer.Option(
        None,
        "--calibration",
        help="Take the step's figures from this JSON or YAML file instead of probing the job: the fields of "
        "-o json's calibration, at the job's batch (e.g. examples/plan/study-flowers.yaml).",
    ),
    recalibrate: bool = typer.Option(
        False, "--recalibrate", help="Probe the job again, even if a calibration is cached."
    ),
    probe_steps: int = typer.Option(100, "--probe-steps", min=10, help="Steps per epoch of each probe job (3 epochs)."),
    target: str | None = typer.Option(
        None,
        "--target",
        "-t",
        help="Where the probe runs, as for submit; a cluster's probe needs a gs:// or s3:// --model-dir, "
        "where its tasks report [default: local].",
    ),
    image: str | None = typer.Option(
        None, "--image", help="Trainer image of a docker probe [default: parallel-ml:latest]."
    ),
    output: str = OUTPUT,
    every: bool = typer.Option(False, "--all", help="Every shape in the table, not the first 12."),
    plot: pathlib.Path | None = typer.Option(
        None, "--plot", help="Write a PNG: examples/s and price per shape, the recommended one marked."
    ),
    write: pathlib.Path | None = typer.Option(
        None, "--write", help="Write the job with the recommended shape to this job file, for `pmlctl submit -f`."
    ),
    trainer_flags: dict | None = None,
):
    """Predict every cluster shape of this job (examples/s, time, price) and recommend one.

    It calibrates what it cannot know with a short probe of this very job on the target: as
    processes here, as containers of its image (-t docker), or as pods (-t k8s, with a gs:// or
    s3:// model dir): a few hundred steps as one process, as 1 worker + 1 ps (and + 2 ps) and as 2
    mirrored replicas. Each task reports its CPU, the bytes it received and its memory: a step's
    compute and CPU, the bytes a step moves, the parameter bytes. It is cached by the job's
    fingerprint, so a second plan is instant. Then for each shape in --workers x --ps on each --machine it predicts examples/s
    with the network cost model (docs/plan.md), the training time of --epochs, and the price of
    every machine of the shape, chief and ps included; and where a step's time goes: compute, its
    own transfers, waiting on the shared link.

    \b
    Examples:
      pmlctl plan --preset fashion-mlp --machine n2-standard-4 --machine e2-standard-4
      pmlctl plan --epochs 20 --deadline 2h --spot --write job.yaml
      pmlctl plan -f job.yaml --budget 5usd -o json
    """
    from deploy import calibrate, costmodel, machines, planning

    if output not in ("table", "json"):
        raise BadInput(f"--output {output}: use table or json")
    probe = registry.choose("submit", target, {})
    if image is not None and not probe.runs_image:
        raise BadInput(f"--image {image}: -t {probe.name} runs no image; give the target of the image's probe")
    spec = build_spec(file, name, {}, trainer_flags, preset, image=image)
    # Before anything is probed or printed: a plan whose file cannot be written is no plan.
    if plot is not None and plot.suffix.lower() != ".png":
        raise BadInput(f"--plot {plot}: the plot is a PNG; give a file ending in .png")
    if plot is not None and write is not None and plot.resolve() == write.resolve():
        raise BadInput(f"--plot and --write name one file, {plot}; give each its own")
    for flag, path in (("--plot", plot), ("--write", write)):
        if path is not None:
            _writable(flag, path)
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise BadInput("--plot needs matplotlib: pip install 'parallel-ml[experiments]'")
    shapes_w = planning.span(workers, "workers", 0, 256)
    shapes_ps = planning.span(ps, "ps", 0, 64)
    wanted_deadline = None if deadline is None else planning.duration(deadline)
    wanted_budget = None if budget is None else planning.money(budget)
    planning.check_goal(goal, wanted_deadline, wanted_budget)  # before a probe of a minute and a half
    table = machines.load(machines_file, settings)
    chosen = list(dict.fromkeys(machine)) or [
        n for n, m in table.machines.items() if m.study is None and not m.shared_cores
    ]
    roles = [
        planning.Roles(
            table.get(m),
            None if ps_machine is None else table.get(ps_machine),
            None if chief_machine is None else table.get(chief_machine),
        )
        for m in chosen
    ]
    where = target or registry.DEFAULT
    # Tasks that run elsewhere move a step's bytes over the planned machines' links, not this machine's loopback.
    link = None if probe.sees_local_files else (rtt, roles[0].workers.rate * costmodel.PAYLOAD)
    if calibration is not None:
        cal = calibrate.from_file(calibration)
    else:
        found = None if recalibrate else calibrate.cached(spec, where, probe_steps, link)
        cal = found or calibrate.measure(spec, target, probe_steps, lambda text: typer.echo(text, err=True), link)
    if cal.batch != spec.trainer.batch_size:
        fix = f"give --batch-size {cal.batch}, or a calibration" if calibration is not None else "--recalibrate"
        raise BadInput(f"the calibration is for batch {cal.batch}, the job's is {spec.trainer.batch_size}; {fix}")
    result = planning.plan(
        cal,
        table,
        roles,
        shapes_w,
        shapes_ps,
        spec.trainer.epochs,
        goal,
        wanted_deadline,
        wanted_budget,
        rtt,
        spot,
    )
    view.planned(result, output, every)
    if plot is not None:
        from deploy import plots

        try:
            plots.plan(result, plot)
        except OSError as err:
            raise BadInput(f"--plot {plot}: cannot write it ({err.strerror})") from None
        typer.echo(f"wrote {plot}", err=True)
    if not result.met:
        # Exit non-zero, so that `plan --deadline 2h --write job.yaml && pmlctl submit -f job.yaml`
        # submits nothing that misses its deadline.
        unwritten = f"; {write} not written" if write is not None else ""
        raise BadInput(f"{result.goal}: no shape meets it{unwritten}; loosen it or widen --workers and --machine", 1)
    if write is not None:
        import yaml

        doc = planning.job_document(spec.model_dump(mode="json", exclude_defaults=True), result.recommended, table)
        try:
            write.write_text(yaml.safe_dump(doc, sort_keys=False))
        except OSError as err:
            raise BadInput(
                f"--write {write}: cannot write it ({err.strerror}); give a file in an existing folder"
            ) from None
        typer.echo(f"wrote {write}: submit it with `pmlctl submit -f {write}`", err=True)


def _writable(flag: str, path: pathlib.Path) -> None:
    """Refuse a file that cannot be written, by opening it (root passes every permission check,
    and /proc or a read-only mount refuse only then); one that was not there is not left."""
    there = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as err:
        raise BadInput(
            f"{flag} {path}: cannot write it ({err.strerror}); give a file in an existing folder you can write to"
        ) from None
    if not there:
        path.unlink()


def _same_run(spec: JobSpec) -> None:
    """Refuse, before any task starts, a model dir that holds another run (a job file's name fixes
    runs/<name>, so reusing one is easy). The chief checks again when it starts, so where this
    machine cannot read the model dir the job goes ahead: with a note when the storage client is
    not installed here, quietly when the storage does not answer this machine (the tasks may have
    other credentials and another network; a local job's chief reports what is wrong)."""
    from pml_trainer import fingerprint

    opts = spec.trainer
    endpoint = opts.s3_endpoint or spec.env.get("AWS_ENDPOINT_URL")
    try:
        note = fingerprint.admit(opts.model_copy(update={"s3_endpoint": endpoint}), may_discard=False, patient=False)
    except fingerprint.Mismatch as err:
        raise BadInput(str(err)) from None
    except storage.StorageError as err:
        if storage.INSTALL_HINT not in str(err):
            return
        note = f"the model dir's {fingerprint.FILE} is not checked here ({err}); the chief checks it when it starts"
    if note:
        view.event(Note(note))


def _data_ready(spec: JobSpec) -> None:
    """A local dataset that is not what it claims to be is refused here, before any task starts:
    the chief would otherwise find out after the whole cluster is up."""
    from pml_trainer import datacheck, exits

    try:
        datacheck.check(spec.trainer.dataset, spec.trainer.data_dir)
    except datacheck.BadData as err:
        raise BadInput(str(err), exits.DATA_UNAVAILABLE) from None


@command()
@with_targets("status")
def status(name: str = JOB, output: str = OUTPUT, target: str | None = None, target_options: dict | None = None):
    """A job's state, and each task's process, container or pod, restarts, exit code and last error."""
    chosen, handle = _job("status", name, target, target_options)
    view.status(chosen.status(handle), output)


@command()
@with_targets("logs")
def logs(
    name: str = JOB,
    role: str = typer.Option("chief", "--role", help="chief, worker, ps or evaluator."),
    index: int = typer.Option(0, "--index", help="Which task of the role."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the task ends."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Every line, TensorFlow's repeats about a lost peer included."
    ),
    target: str | None = None,
    target_options: dict | None = None,
):
    """Print one task's log (the chief's by default), TensorFlow's repeated lines about a lost
    peer folded into a count unless --verbose."""
    chosen, handle = _job("logs", name, target, target_options)
    view.logs(chosen.logs(handle, role, index, follow), verbose)


@command("list")
@with_targets("list")
def list_jobs(
    output: str = OUTPUT,
    runs: bool = typer.Option(False, "--runs", help="Each run of an experiment, instead of one row per experiment."),
    target: str | None = None,
    target_options: dict | None = None,
):
    """The jobs started from this machine, or with -t k8s those in a namespace, with their state."""
    view.job_lists(
        [
            cls(view.event).list(_settings(cls, "list", target_options))
            for cls in registry.choose_all(target, target_options)
        ],
        output,
        runs,
    )


@command()
@with_targets("delete")
def delete(name: str = JOB, target: str | None = None, target_options: dict | None = None):
    """Stop a job if it still runs, and forget it (k8s: delete every object it made); return once
    its processes, containers or pods are gone. A job that does not exist is not an error."""
    chosen, handle = _job("delete", name, target, target_options)
    view.deleted(handle, chosen.delete(handle))


@command()
@with_targets("wait")
def wait(
    name: str = JOB,
    timeout: float | None = typer.Option(None, "--timeout", help="Give up after this many seconds."),
    target: str | None = None,
    target_options: dict | None = None,
):
    """Wait for a job to end: exit 0 on success, 1 on failure, 2 on timeout."""
    chosen, handle = _job("wait", name, target, target_options)
    outcome = chosen.wait(handle, timeout)
    view.outcome(outcome)
    raise typer.Exit(outcome.code)


@command()
@with_trainer_flags
def render(
    workers: int | None = WORKERS,
    ps: int | None = PS,
    evaluator: bool | None = EVALUATOR,
    file: pathlib.Path | None = JOB_FILE,
    name: str | None = JOB_NAME,
    preset: str | None = PRESET,
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Kubernetes namespace [default: default]."),
    image: str | None = typer.Option(None, "--image", help="Trainer image [default: parallel-ml:latest]."),
    mode: str | None = typer.Option(
        None, "--mode", help="tfjob (Kubeflow Training Operator) or native (plain Jobs and Services) [default: tfjob]."
    ),
    output: pathlib.Path | None = typer.Option(
        None, "--output", "-o", help="Write the manifest to this file instead of stdout."
    ),
    values: bool = typer.Option(False, "--values", help="Print the chart's values instead, for `helm install -f`."),
    validate: bool = typer.Option(
        True, "--validate/--no-validate", help="Check every object before printing it (needs parallel-ml[validate])."
    ),
    crd: pathlib.Path | None = typer.Option(
        None,
        "--crd",
        envvar="PML_TFJOB_CRD",
        help="TFJob CRD file (kubeflow.org_tfjobs.yaml) to check the TFJob against.",
    ),
    kube_version: str | None = typer.Option(
        None, "--kube-version", help="Kubernetes version whose schemas every object must pass [default: 1.30]."
    ),
    trainer_flags: dict | None = None,
):
    """Render the job for Kubernetes through the Helm chart, and check every object.

    The output is what `helm template` prints for the same values.

    \b
    Example:
      pmlctl render --mode native --workers 6 --ps 3 -o job.yaml
    """
    from deploy import render as rendering
    from deploy import workspaces

    spec = build_spec(
        file,
        name,
        _replicas(workers, ps, evaluator),
        trainer_flags,
        preset,
        namespace=namespace,
        image=image,
        mode=mode,
    )
    spec, notes = workspaces.previewed(spec)
    result = (
        rendering.Rendered(rendering.values_yaml(spec))
        if values
        else rendering.render(spec, validate=validate, crd=crd, kube_version=kube_version)
    )
    if output is not None:
        try:
            output.write_text(result.manifest)
        except OSError as err:
            raise BadInput(
                f"--output {output}: cannot write it ({err.strerror}); give a file in an existing folder"
            ) from None
    for note in notes + result.notes:
        view.event(Note(note))
    if output is None:
        typer.echo(result.manifest, nl=False)
    else:
        typer.echo(f"wrote {output}", err=True)


image_app = typer.Typer(
    help="Build and push the trainer image; each command prints the docker command it runs.", no_args_is_help=True
)
app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    tag: str | None = typer.Option(
        None, "--tag", help="Image tag [default: parallel-ml:latest; parallel-ml:latest-gpu with --gpu]."
    ),
    gpu: bool = typer.Option(False, "--gpu", help="TensorFlow with its CUDA libraries instead of the CPU build."),
    base: str | None = typer.Option(
        None,
        "--base",
        envvar="PML_BASE_IMAGE",
        help="Base image: Python 3.11 on Debian, or plain Debian 12 [default: python:3.11-slim].",
    ),
    ca_bundle: pathlib.Path | None = typer.Option(
        None,
        "--ca-bundle",
        envvar="PML_CA_BUNDLE",
        help="CA certificates (PEM) for pip, e.g. behind a TLS-intercepting proxy.",
    ),
    context: pathlib.Path = typer.Option(
        pathlib.Path("."), "--context", help="The parallel-ml checkout holding the Dockerfile."
    ),
):
    """Build the trainer image with `docker build` (BuildKit) from the Dockerfile.

    \b
    Example:
      pmlctl image build --base local/debian:bookworm --ca-bundle /etc/ssl/certs/ca-certificates.crt
    """
    from deploy import image

    argv = image.build_command(context, tag or (image.GPU_TAG if gpu else image.DEFAULT_TAG), gpu, base, ca_bundle)
    raise typer.Exit(image.run(argv))


@image_app.command("push")
def image_push(
    tag: str = typer.Option("parallel-ml:latest", "--tag", help="Image to push; its name says the registry."),
):
    """Push the image with `docker push` (log in first with `docker login REGISTRY`)."""
    from deploy import image

    raise typer.Exit(image.run(image.push_command(tag)))


cluster_app = typer.Typer(
    help="A local kind cluster for --target k8s: Training Operator, MinIO, the trainer image.", no_args_is_help=True
)
app.add_typer(cluster_app, name="cluster")
CLUSTER_NAME = typer.Option("pml", "--name", help="kind cluster name (its context is kind-NAME).")


@cluster_app.command("up")
def cluster_up(
    name: str = CLUSTER_NAME,
    image: str = typer.Option("parallel-ml:latest", "--image", help="Trainer image to build and load."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build the image even if it exists."),
):
    """Create the cluster and install what jobs need; steps already done are skipped."""
    from deploy import cluster

    cluster.up(name, image, rebuild)


@cluster_app.command("down")
def cluster_down(name: str = CLUSTER_NAME):
    """Delete the kind cluster."""
    from deploy import cluster

    cluster.down(name)


@app.command()
def artifacts(
    job: str = typer.Argument(
        ..., help="Job name (local or docker), or a model dir: a folder, gs://BUCKET/PATH or s3://BUCKET/PATH."
    ),
    s3_endpoint: str | None = typer.Option(
        None, "--s3-endpoint", help="S3 service for s3:// [default: AWS_ENDPOINT_URL, else AWS]."
    ),
):
    """List what a job wrote: checkpoints (the latest marked), metrics, TensorBoard events, SavedModel.

    \b
    Example:
      pmlctl artifacts s3://models/run1 --s3-endpoint http://127.0.0.1:9000
    """
    from deploy import artifacts as listing

    location = job
    if not storage.is_remote(job) and not pathlib.Path(job).is_dir():
        record = jobs.read(job)
        if record is None:
            raise BadInput(
                f"job {job} not found; give a job started here, or a model dir (`pmlctl list` shows the jobs)"
            )
        location, s3_endpoint = record.model_dir, s3_endpoint or record.details.get("s3_endpoint")
    try:
        storage.parse(location)
    except storage.StorageError as err:  # a malformed location is bad input, not an unavailable one
        raise BadInput(str(err)) from None
    try:
        typer.echo(listing.table(location, s3_endpoint))
    except storage.StorageError as err:
        raise Unavailable(str(err)) from None


def _experiment(kind: str, name: str | None, target: str | None, given: dict[str, Any]):
    """The experiment's name (its runs are named after it), and the target its runs go to."""
    if importlib.util.find_spec("matplotlib") is None:  # find out before hours of runs, not after
        raise BadInput("plots need matplotlib: pip install 'parallel-ml[experiments]'")
    cls = registry.choose("submit", target, given)
    chosen = cls(functools.partial(view.event, phases=False))  # the runs' progress lines say it
    return name or f"{kind}-{time.strftime('%m%d-%H%M%S')}", chosen, _settings(cls, "submit", given)


@command()
@with_targets("submit")
@with_trainer_flags
def sweep(
    param: list[str] = typer.Option(
        ...,
        "--param",
        help="NAME=V1,V2,...: a trainer flag, or cores (CPUs and thread pools). Repeat it to sweep several, one at a time.",
    ),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Runs per value; the table shows their mean and spread."),
    workers: int = typer.Option(0, "--workers", "-w", help="Workers of every run (0: one process)."),
    ps: int = typer.Option(0, "--ps", help="Parameter servers of every run."),
    preset: str | None = PRESET,
    file: pathlib.Path | None = JOB_FILE,
    name: str | None = typer.Option(
        None, "--name", help="The experiment's name; its runs are NAME-<param>-<i>-<repeat> [default: sweep-<time>]."
    ),
    out: pathlib.Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for sweep.json, sweep.csv and sweep.png [default: runs/<name>, beside the runs' model dirs].",
    ),
    trainer_flags: dict | None = None,
    target: str | None = None,
    target_options: dict | None = None,
):
    """Train once per value of a parameter, everything else held fixed, and tabulate the results.

    For each value: loss, the task's first metric (accuracy for the study's networks) and its
    validation figure, training time and examples/s, as the mean over --repeats with the spread,
    and as a percentage of the first value, as in the study's tables. Writes sweep.json, sweep.csv
    and sweep.png (time and the test score against the parameter) and prints the table. Runs are jobs on the target, one after another; with -t k8s
    give --model-dir gs:// or s3://, where their metrics are read.

    \b
    Example:
      pmlctl sweep --param neurons=32,128,256,512 --param cores=1,2 --epochs 5 --repeats 3
    """
    from deploy import experiments

    experiment, chosen, options = _experiment("sweep", name, target, target_options)
    spec = build_spec(file, experiment, {"workers": workers, "ps": ps, "evaluator": 0}, trainer_flags, preset)
    _finish(
        lambda: experiments.sweep(spec, param, repeats, chosen, options),
        out or pathlib.Path("runs") / experiment,
        "sweep",
    )


@command()
@with_targets("submit")
@with_trainer_flags
def compare(
    shape: list[str] = typer.Option(
        ..., "--shape", help="WORKERSxPS of a cluster to run, e.g. 2x1 or 6x3 (always with 1 chief). Repeat it."
    ),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Runs per shape; the table shows their mean and spread."),
    preset: str | None = PRESET,
    file: pathlib.Path | None = JOB_FILE,
    name: str | None = typer.Option(
        None, "--name", help="The experiment's name; its runs are NAME-<shape>-<repeat> [default: compare-<time>]."
    ),
    out: pathlib.Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for compare.json, compare.csv and compare.png [default: runs/<name>, beside the runs' model dirs].",
    ),
    trainer_flags: dict | None = None,
    target: str | None = None,
    target_options: dict | None = None,
):
    """Run the same job as one process (the baseline) and as cluster shapes, and compare them.

    Prints the study's distributed table: loss and time as a percentage of the single process,
    with examples/s and the speed-up (baseline time / time). Writes compare.json, compare.csv and
    compare.png (a bar chart). Runs are jobs on the target, one after another; with -t k8s give
    --model-dir gs:// or s3://, where their metrics are read.

    \b
    Example:
      pmlctl compare -t k8s --shape 1x0 --shape 6x3 --epochs 3 --model-dir s3://models/study
    """
    from deploy import experiments

    experiment, chosen, options = _experiment("compare", name, target, target_options)
    spec = build_spec(file, experiment, {"evaluator": 0}, trainer_flags, preset)
    _finish(
        lambda: [experiments.compare(spec, shape, repeats, chosen, options)],
        out or pathlib.Path("runs") / experiment,
        "compare",
    )


def _finish(run, out_dir: pathlib.Path, stem: str) -> None:
    """Run an experiment (a function giving its tables), print the tables and write the files;
    exit 1 when a run failed (its row says why), 130 when one was cancelled."""
    from deploy import experiments
    from pml_trainer import exits

    try:
        tables = run()
    except experiments.Interrupted as err:
        raise BadInput(f"the experiment stopped: {err}", exits.INTERRUPTED) from None
    for table in tables:
        typer.echo(f"\n{table.title}\n{experiments.render(table)}")
    paths = experiments.write(tables, out_dir, stem)
    typer.echo("\nwrote " + ", ".join(str(p) for p in paths))
    failed = sum(len(row.failures) for table in tables for row in table.rows)
    if failed:
        raise BadInput(f"{failed} run(s) failed; their rows say why", exits.FAILED)


def main() -> None:
    configure_for_cli()
    try:
        app()
    except (BadInput, Unavailable) as err:  # raised while the commands are built: a target that will not load
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(err.exit_code) from None
