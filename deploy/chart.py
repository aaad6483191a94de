"""The Helm chart's inputs, made from the `JobSpec`: its values and its values.schema.json.

The JobSpec is the one definition of a job. The chart's values are a JobSpec's fields as they
are (so a values file is also a job file), without the namespace, which is the release's. The
chart's default values.yaml and its schema are generated here; regenerate them after changing
the JobSpec with `python -m deploy.chart` (a test fails while they are stale).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import yaml

from deploy.spec import JobSpec

CHART_ENV = "PML_CHART"
HEADER = (
    "# Generated from deploy/spec.py (JobSpec) by `python -m deploy.chart`: change the JobSpec,\n"
    "# not this file. `pmlctl render --values` prints the values of one job.\n"
)


def chart_dir() -> pathlib.Path:
    """Where $PML_CHART says, else the chart of this source tree, else the copy in the wheel."""
    if os.environ.get(CHART_ENV):
        return pathlib.Path(os.environ[CHART_ENV])
    here = pathlib.Path(__file__).resolve().parent
    source = here.parent / "charts" / "parallel-ml"
    return source if source.is_dir() else here / "helm_chart"


def values(spec: JobSpec) -> dict[str, Any]:
    """The chart values of one job. Trainer flags left at their defaults are left out, as the
    trainer's own defaults apply; `null` is kept where it overrides a chart default."""
    doc = spec.model_dump(mode="json", exclude={"namespace"})
    doc["trainer"] = spec.trainer.model_dump(mode="json", exclude_defaults=True)
    return doc


def default_values() -> dict[str, Any]:
    """values.yaml: a default job, named after the Helm release."""
    doc = values(JobSpec(name="unused"))
    del doc["name"]
    doc["trainer"] = {}
    return doc


def values_schema() -> dict[str, Any]:
    schema = JobSpec.model_json_schema()
    del schema["properties"]["namespace"]
    schema["title"] = "parallel-ml chart values (a JobSpec without its namespace)"
    return schema


def generated_files() -> dict[str, str]:
    """File name in the chart -> the content it must have."""
    return {
        "values.yaml": HEADER + yaml.safe_dump(default_values(), sort_keys=False),
        "values.schema.json": json.dumps(values_schema(), indent=2) + "\n",
    }


def stale_files(chart: pathlib.Path) -> list[str]:
    """The generated files of `chart` that differ from what the JobSpec gives."""
    return [
        name
        for name, text in generated_files().items()
        if not (chart / name).is_file() or (chart / name).read_text() != text
    ]


def write(chart: pathlib.Path) -> None:
    for name, text in generated_files().items():
        (chart / name).write_text(text)


if __name__ == "__main__":
    write(chart_dir())
    print(f"wrote {', '.join(generated_files())} in {chart_dir()}")
