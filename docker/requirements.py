"""Print what the trainer needs from pyproject.toml, one requirement per line, for the image build.

That is the `train` extra (with the extras it names of this project expanded) and pydantic, the
one base dependency the trainer imports (trainer/options.py). The rest of the base install is the
CLI's (typer, pyyaml, and helm-python-sdk at 240 MB), which the image leaves out. With --gpu, the
CPU-only TensorFlow becomes the build with CUDA libraries.
"""

import sys

import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
wanted = [d for d in project["dependencies"] if d.startswith("pydantic")]
todo = list(extras["train"])
while todo:
    requirement = todo.pop(0)
    if requirement.startswith(project["name"] + "["):  # e.g. parallel-ml[storage]
        todo += [d for extra in requirement.split("[")[1].rstrip("]").split(",") for d in extras[extra.strip()]]
    else:
        wanted.append(requirement)
gpu = "--gpu" in sys.argv
print("\n".join(r.replace("tensorflow-cpu", "tensorflow[and-cuda]", 1) if gpu else r for r in wanted))
