"""The project's one error type for input a user must fix, and the pieces its one-line messages
are made of.

Both programs refuse bad input the same way: one line on stderr (what is wrong, and how to fix it),
no traceback, and a non-zero exit code. `pmlctl` turns a `BadInput` into that line in one place
(deploy/cli.py, `OneLineErrors`), the trainer in `trainer/__main__.py`. Free of TensorFlow, and
of every module of the project but the exit codes, so that anything may raise it.
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import ValidationError

from pml_trainer.exits import BAD_INPUT, DATA_UNAVAILABLE


class BadInput(ValueError):
    """Input the user must fix; the process exits with `exit_code` (2 unless said otherwise: a
    dataset that cannot be read is 3) after one line."""

    def __init__(self, message: str, exit_code: int = BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


class Unavailable(Exception):
    """A service outside the program did not answer, or answered that it cannot serve now (a
    Kubernetes API server's 429 or 5xx, a Docker daemon that cannot be reached, a timeout): the
    input is fine, and the same command may work later. One line, like `BadInput`, and exit 3, the
    code of what cannot be read (not 176: that asks Kubernetes to restart a task, and nothing
    restarts pmlctl)."""

    def __init__(self, message: str, exit_code: int = DATA_UNAVAILABLE):
        super().__init__(message)
        self.exit_code = exit_code


class Problem(NamedTuple):
    """The first problem pydantic found, in the pieces our one-line errors are made of."""

    loc: list[str]
    kind: str  # pydantic's error type, such as "missing" or "extra_forbidden"
    message: str
    given: str  # " (got VALUE)" when the input was a plain value, else ""


def first_problem(err: ValidationError) -> Problem:
    first = err.errors()[0]
    value = first.get("input")
    given = f" (got {value!r})" if isinstance(value, (str, int, float)) else ""
    return Problem([str(p) for p in first["loc"]], first["type"], first["msg"].removeprefix("Value error, "), given)
