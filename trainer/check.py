"""`python -m pml_trainer.check <the trainer's flags>`: a task tried once, in seconds, before a job
runs it (`pmlctl check` runs this in the job's own environment).

It does what the chief does at the start of a job, through the same code, once each: loads the task,
builds its model and optimizer, counts an epoch's examples, takes one batch of the trainer's own
training stream, trains one step on it (pml_trainer.loop's StepRunner, under the default strategy),
scores a batch of the evaluation data, exports a SavedModel and loads it back. Then it reports what it
found: the batch's shapes, the model's outputs, the loss on the batch before and after the step,
the metric names, the serving signature and the seconds taken; with `--output json`, as one JSON
object on stdout. Nothing is written to the model dir.

A task that fails is told as the trainer tells it (pml_trainer.failures.reported): the task's own
frames, then one `error:` line, and exit code 2. An error that no code of the task raised, while
the check ran the task (a loss whose shapes do not fit the model's, say), is the task's to fix
too, so it is told the same way, naming the stage it broke.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import signal
import sys
import tempfile
import time
import traceback
from typing import Any

from pml_trainer import exits

# Ctrl-C while the modules below load (pydantic, then TensorFlow in the check) ends the check as it
# does later, quietly with 130, not with a traceback of the import it cut short; main() takes over.
signal.signal(signal.SIGINT, lambda *_: os._exit(exits.INTERRUPTED))

from pml_trainer import failures, fingerprint, task_code  # noqa: E402 (after the handler above)
from pml_trainer.errors import BadInput  # noqa: E402
from pml_trainer.log import configure_for_cli, log  # noqa: E402
from pml_trainer.options import TrainOptions, parser, validated  # noqa: E402

PROG = "python -m pml_trainer.check"
OUTPUTS = ("table", "json")
OURS = pathlib.Path(__file__).resolve().parent


def parse(argv: list[str]) -> tuple[str, TrainOptions]:
    """The report's form, and the trainer's options: the trainer's own flags, and --output."""
    flags = parser(PROG)
    flags.description = __doc__.split("\n\n")[0]
    flags.add_argument("--output", "-o", choices=OUTPUTS, default="table", help="table or json (default: table)")
    given = {k: v for k, v in vars(flags.parse_args(argv)).items() if v is not None}
    return given.pop("output"), validated(given)


def main(argv: list[str]) -> int:
    began = time.monotonic()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt, reported below
    # The check speaks to a person at a terminal, as pmlctl does: `error: ...`, not log lines.
    configure_for_cli()
    try:
        output, opts = parse(argv)
    except BadInput as err:
        log.error("%s", err)
        return exits.BAD_INPUT
    if missing := opts.missing_local_data():
        log.error("%s", missing)
        return exits.DATA_UNAVAILABLE
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    stages = Stages()
    # With --output json, stdout holds the report alone: what the task prints goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if output == "json" else contextlib.nullcontext()
    try:
        with quiet:
            report = check(opts, stages)
    except (Exception, KeyboardInterrupt) as err:
        code = failures.reported(stages.blamed(err, opts), opts)
        if code is None:
            raise
        return code
    report["seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(report, indent=2) if output == "json" else table(report), flush=True)
    return exits.OK


class Stages:
    """What the check is doing, so that an error names the stage it broke."""

    def __init__(self) -> None:
        self.now = "while loading"

    def blamed(self, err: BaseException, opts: TrainOptions) -> BaseException:
        """`err` as the task's failure when nothing else claims it: no exit code of its own, and
        a task of the user's, whose code the check was running."""
        if opts.task is None or failures.exit_code(err) is not None or _raised_by_us(err):
            return err
        return task_code.failure(err, opts, f"task {opts.task} failed {self.now}") or err


def _raised_by_us(err: BaseException) -> bool:
    """A bug of ours, which keeps its traceback: raised in the trainer's own code, not in
    TensorFlow's or Keras's refusing what the task gave them."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and pathlib.Path(frames[-1].filename).resolve().is_relative_to(OURS)


def check(opts: TrainOptions, stages: Stages) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from pml_trainer import loop
    from pml_trainer.task import Task

    class OneBatch(Task):
        """The task, its training stream the one batch again and again: the step trains on the
        very batch whose loss the report shows before and after it."""

        def train_data(self, per_replica_batch: int, seed: int | None, resume_step: int = 0):
            return lambda context=None: tf.data.Dataset.from_tensors(batch).repeat()

    keras.utils.set_random_seed(opts.seed)
    task = OneBatch(opts)
    stages.now = "while building its model"
    model = task.built_model()
    optimizer = task.build_optimizer(model)
    stages.now = "while counting an epoch's examples"
    examples = task.examples_per_epoch()
    stages.now = "while reading the first batch of train_data"
    batch = next(iter(Task.train_data(task, opts.batch_size, opts.seed)()))  # the trainer's own stream
    stages.now = "while scoring the batch"
    outputs = model(batch[0], training=False)
    scores = task.evaluation(model)
    before = scores(tf.data.Dataset.from_tensors(batch))
    stages.now = "in the training step"
    runner = loop.StepRunner(
        task,
        model,
        optimizer,
        tf.distribute.get_strategy(),
        None,
        global_batch=opts.batch_size,
        total_steps=1,
        one_process=True,
    )
    step = task.means(loop.fetch_totals([runner.run(0, 1)], len(task.names) + 1))
    stages.now = "while scoring the batch after the step"
    after = scores(tf.data.Dataset.from_tensors(batch))
    stages.now = "while scoring a batch of its evaluation data"
    validation = task.validation_data()
    evaluation = scores(validation.take(1)) if validation is not None else None
    with tempfile.TemporaryDirectory(prefix="pml-check-") as folder:
        stages.now = "while exporting the SavedModel"
        export_dir = pathlib.Path(folder) / "saved_model"
        task.export(model, export_dir)
        stages.now = "while loading the SavedModel back"
        serving = signatures(tf.saved_model.load(str(export_dir)))
    return {
        "task": opts.task or f"built-in {opts.model} on {opts.dataset}",
        "workspace": str(task_code.workspace(opts)) if opts.task else None,
        "code_digest": fingerprint.code_digest(opts),
        "batch": {"features": specs(batch[0]), "labels": specs(batch[1])},
        "examples_per_epoch": examples,
        "steps_per_epoch": max(examples // opts.batch_size, 1),
        "outputs": specs(outputs),
        "parameters": model.count_params(),
        # In creation order, as ParameterServerStrategy hands them to the ps in turn (`pmlctl plan`).
        "variable_bytes": [int(v.numpy().nbytes) for v in model.trainable_variables],
        "optimizer": type(optimizer).__name__,
        "metrics": list(task.names),
        "before_step": before,
        "in_step": step,
        "after_step": after,
        "eval_batch": evaluation,
        "serving": serving,
    }


def specs(value, path: str = "") -> dict[str, dict[str, Any]]:
    """Each tensor of a nested structure by its path ("" for a lone tensor): its dtype and shape."""
    if isinstance(value, dict):
        items = [(str(key), value[key]) for key in sorted(value)]
    elif isinstance(value, (list, tuple)):
        items = [(str(index), item) for index, item in enumerate(value)]
    else:
        return {path: {"dtype": value.dtype.name, "shape": list(value.shape)}}
    return {name: spec for key, item in items for name, spec in specs(item, f"{path}/{key}".lstrip("/")).items()}


def signatures(loaded) -> dict[str, dict[str, Any]]:
    """Each serving signature of a loaded SavedModel: its inputs and outputs by name."""
    found = {}
    for name, function in loaded.signatures.items():
        _, inputs = function.structured_input_signature
        found[name] = {"inputs": specs(inputs), "outputs": specs(function.structured_outputs)}
    return found


def table(report: dict[str, Any]) -> str:
    """The report for a person: one line per thing found."""
    before, after = report["before_step"], report["after_step"]
    task = report["task"]
    if report["workspace"]:
        task += f" in {report['workspace']} (code {report['code_digest']})"
    lines = [
        f"task        {task}",
        f"batch       {_tensors(report['batch']['features'], 'features')}, {_tensors(report['batch']['labels'], 'labels')}",
        f"epoch       {report['examples_per_epoch']} examples: {report['steps_per_epoch']} steps",
        f"model       {_tensors(report['outputs'], 'output')}, {report['parameters']} parameters, {report['optimizer']}",
        f"metrics     {', '.join(report['metrics'])}",
        "one step    "
        + ", ".join(f"{name} {before[name]:.4g} -> {after[name]:.4g}" for name in before)
        + " on the batch",
        "evaluation  "
        + (
            ", ".join(f"{name} {value:.4g}" for name, value in report["eval_batch"].items()) + " on its first batch"
            if report["eval_batch"]
            else "none: no eval_data"
        ),
    ]
    lines += [
        f"SavedModel  {name}: {_tensors(found['inputs'], 'input')} -> {_tensors(found['outputs'], 'output')}"
        for name, found in report["serving"].items()
    ]
    return "\n".join([*lines, f"checked in {report['seconds']:.1f}s"])


def _tensors(found: dict[str, dict[str, Any]], alone: str) -> str:
    """`features float32 (None, 8)`, for each tensor; a lone one (no path) by the name `alone`."""
    shown = []
    for path, spec in found.items():
        dims = ["None" if d is None else str(d) for d in spec["shape"]]
        shown.append(f"{path or alone} {spec['dtype']} ({', '.join(dims)}{',' if len(dims) == 1 else ''})")
    return ", ".join(shown)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as the trainer: TensorFlow's threads can hold up interpreter shutdown
