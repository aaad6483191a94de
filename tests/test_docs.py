"""The docs say what is there: every relative link (and its #anchor) resolves, every repository
path named in backticks exists, and every `pmlctl` line of a code block parses.

Fast and free of TensorFlow: `pmlctl --help` is read once per command, and the local submits run
with --dry-run in a temporary PML_HOME.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import shlex
from dataclasses import dataclass

import pytest
from conftest import ROOT, pmlctl

DOCS = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "examples").glob("*/README.md")),
]

# A path in backticks is checked when its first part is one of these: the repository's own top level.
TOP_LEVEL = {
    "trainer",
    "deploy",
    "tests",
    "bench",
    "charts",
    "docs",
    "docker",
    "examples",
    ".ci",
    "Makefile",
    "Dockerfile",
    "pyproject.toml",
    "README.md",
    "CHANGELOG.md",
    ".pre-commit-config.yaml",
    ".dockerignore",
    ".gitignore",
}
EXTENSIONS = (".py", ".md", ".yaml", ".yml", ".tf", ".sh", ".json", ".toml", ".txt", ".png", ".cfg")
# Paths that exist only once made: in an installed wheel (the chart, pyproject.toml's package-dir).
GENERATED = {"deploy/helm_chart"}
FENCE = re.compile(r"^(\s*)(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


@dataclass(frozen=True)
class Line:
    doc: pathlib.Path
    number: int
    text: str
    fenced: bool  # inside a fenced code block
    language: str = ""  # that block's info string: sh, bash, yaml, text...

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.number}"


def lines(doc: pathlib.Path) -> list[Line]:
    """Each line, and the fenced block it is in. A fence closes only with its own character, as
    CommonMark says: Python's `~~~~^^^` under a traceback's line inside a ``` block is text."""
    found, fence, language = [], "", ""
    for number, text in enumerate(doc.read_text().splitlines(), 1):
        if FENCE.match(text) and (not fence or text.strip().startswith(fence)):
            fence = "" if fence else text.strip()[:3]
            language = text.strip().strip("`~").strip() if fence else ""
            continue
        found.append(Line(doc, number, text, bool(fence), language))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation but - and _ removed,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache
def anchors(doc: pathlib.Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in lines(doc):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line.text)
        if line.fenced or not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def prose(doc: pathlib.Path) -> list[Line]:
    """The lines outside fenced code blocks, and outside indented code blocks."""
    return [line for line in lines(doc) if not line.fenced and not line.text.startswith("    ")]


# (a) links

LINKS = [
    (line, target)
    for doc in DOCS
    for line in prose(doc)
    for target in LINK.findall(CODE_SPAN.sub("", line.text))
    if not re.match(r"^[a-z][a-z0-9+.-]*:", target)
]  # http:, https:, mailto:


@pytest.mark.parametrize(("line", "target"), LINKS, ids=[f"{line.where}:{target}" for line, target in LINKS])
def test_every_relative_link_resolves(line, target):
    path, _, anchor = target.partition("#")
    linked = (line.doc.parent / path).resolve() if path else line.doc
    assert linked.exists(), f"{line.where}: {target}: no such file"
    if anchor:
        assert linked.suffix == ".md", f"{line.where}: {target}: an anchor into a file that is not Markdown"
        assert anchor in anchors(linked), (
            f"{line.where}: {target}: no heading with that anchor; there are {sorted(anchors(linked))}"
        )


def test_the_links_were_found():
    assert len(LINKS) > 30 and all(doc.exists() for doc in DOCS)
    assert {d.name for d in DOCS} >= {"README.md", "CHANGELOG.md", "cli.md", "trainer.md", "storage.md", "testing.md"}


# (b) repository paths named in backticks


def named_path(span: str) -> str | None:
    """The repository path a code span names, or None when it names none: a command, a URL, a path
    with a placeholder, or one outside the repository's top level (runs/demo/, build/, /etc/...)."""
    span = span.strip()
    if not span or any(c in span for c in " <>$*{}|…") or "://" in span:
        return None
    if "/" not in span and not span.endswith(EXTENSIONS) and span not in TOP_LEVEL:
        return None
    first = span.split("/")[0]
    if first not in TOP_LEVEL or span.startswith("./"):
        return None
    return span.split("#")[0].split(":")[0]


PATHS = [
    (line, path)
    for doc in DOCS
    for line in prose(doc)
    for _, span in CODE_SPAN.findall(line.text)
    if (path := named_path(span))
]


@pytest.mark.parametrize(("line", "path"), PATHS, ids=[f"{line.where}:{path}" for line, path in PATHS])
def test_every_repository_path_named_exists(line, path):
    if path.rstrip("/") in GENERATED:
        return
    # An example's README names its own files from its folder (`trainer/task.py`).
    assert (ROOT / path).exists() or (line.doc.parent / path).exists(), f"{line.where}: `{path}` does not exist"


def test_the_path_heuristic():
    assert named_path("deploy/target.py") == "deploy/target.py"
    assert named_path("tests/hosts/") == "tests/hosts/"
    assert named_path("Makefile") == "Makefile"
    for not_a_path in (
        "runs/demo/",
        "gs://b/run",
        "$PML_HOME/jobs/NAME/<role>-<index>.log",
        "build/docker-test/",
        "/etc/netns/NAME/hosts",
        "tensorflow/core/framework/resource_mgr.cc",
        "docker.io",
        ".venv/bin/python -m deploy.chart",
        "<model-dir>/metrics.jsonl",
        "deploy.chart",
    ):
        assert named_path(not_a_path) is None, not_a_path
    assert len(PATHS) > 50


# (c) pmlctl lines of code blocks


SHELLS = {"", "sh", "bash", "console", "shell"}  # a diagram is a text block


def commands() -> list[tuple[Line, list[str], str | None]]:
    """Each `pmlctl ...` line of a fenced block (continuations joined, comments dropped), as argv
    after `pmlctl`, with the `error:` line a console example shows under it."""
    found = []
    for doc in DOCS:
        doc_lines = lines(doc)
        i = 0
        while i < len(doc_lines):
            line = doc_lines[i]
            text = line.text.strip()
            start = line
            while text.endswith("\\") and i + 1 < len(doc_lines):
                i += 1
                text = text[:-1] + " " + doc_lines[i].text.strip()
            i += 1
            text = re.sub(r"^\$\s+", "", text)
            text = re.sub(r"\s+#.*$", "", text)
            if not (start.fenced and start.language in SHELLS and text.startswith("pmlctl")):
                continue
            shown = doc_lines[i].text.strip() if i < len(doc_lines) and doc_lines[i].fenced else ""
            found.append((start, shlex.split(text)[1:], shown if shown.startswith("error:") else None))
    return found


COMMANDS = commands()
GROUPS = {"cluster", "image"}


def command_path(argv: list[str]) -> tuple[str, ...]:
    path = []
    for arg in argv:
        if arg.startswith("-") or (path and path[0] not in GROUPS) or len(path) == 2:
            break
        path.append(arg)
    return tuple(path)


@functools.cache
def help_text(path: tuple[str, ...]) -> str:
    result = pmlctl(*path, "--help", cwd=ROOT, timeout=60)
    assert result.returncode == 0, f"pmlctl {' '.join(path)} --help: {result.stderr}"
    return result.stdout


@pytest.mark.parametrize(
    ("line", "argv", "shown"), COMMANDS, ids=[f"{line.where}:{' '.join(argv)[:40]}" for line, argv, _ in COMMANDS]
)
def test_every_pmlctl_line_parses(line, argv, shown, tmp_path):
    path = command_path(argv)
    text = help_text(path)
    for arg in argv:
        option = arg.split("=")[0]
        if re.fullmatch(r"--?[a-zA-Z][\w-]*", option):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
                f"{line.where}: pmlctl {' '.join(path)} has no {option}"
            )
    if shown is not None:  # a console example: the output it shows is the output
        result = pmlctl(*argv, cwd=tmp_path, timeout=60, env={**os.environ, "PML_HOME": str(tmp_path / "home")})
        assert (result.returncode, result.stderr.strip()) == (2, shown), line.where
    elif dry_run_is_cheap(argv):
        result = pmlctl(
            *argv,
            *([] if "--dry-run" in argv else ["--dry-run"]),
            cwd=tmp_path,
            timeout=60,
            env={**os.environ, "PML_HOME": str(tmp_path / "home")},
        )
        assert result.returncode == 0, f"{line.where}: {result.stderr}"


def dry_run_is_cheap(argv: list[str]) -> bool:
    """A local submit that names no file (a job file, a task module), placeholder, cluster or remote location."""
    elsewhere = ("-t", "--target", "--context", "-n", "-f", "--task")
    return (
        command_path(argv) == ("submit",)
        and not any(a in argv for a in elsewhere)
        and not any("://" in a or a.isupper() for a in argv)
    )


def test_the_commands_were_found():
    assert len(COMMANDS) > 30
    assert sum(dry_run_is_cheap(argv) for _, argv, _ in COMMANDS) >= 4
    assert any(shown for _, _, shown in COMMANDS)  # the README's bad-input example
