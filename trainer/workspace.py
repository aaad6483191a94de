"""A workspace: the folder of a user's task module, as it is shipped to every task of a job.

One list of files (`files`) decides what is shipped, and one digest over it (`digest`) names it,
so that a snapshot on this machine, the /workspace of an image and the folder the user edits all
say the same `sha256:...` when they hold the same code. pmlctl checks a workspace (`check`),
copies it into a read-only snapshot (`snapshot`) and checks its requirements.txt
(`unmet_requirements`); the trainer records the digest of the folder it imports from.

Free of TensorFlow: pmlctl imports it.

What is left out: `.git`, `.venv` and `__pycache__` folders anywhere, `*.pyc` files, the `runs/`
folder at the top (where jobs write their model dirs), and what `.pmlignore` names, or else
`.dockerignore`. Both are read with .dockerignore's rules as moby/patternmatcher implements them
(patternmatcher.go, `MatchesOrParentMatches`; ignorefile/ignorefile.go, `ReadAll`): a pattern is
relative to the workspace's top whether or not it starts with `/`; `*` and `?` stay within one
folder, `**` spans any number of them; a pattern that names a folder leaves out all below it;
`!` takes back what an earlier pattern left out, and the last pattern that matches decides. One
rule comes from gitignore instead: a pattern ending in `/` matches folders only. The ignore file
in force is always shipped, so that the copy reads the same rules and lists the same files.

Links: a link to a file inside the workspace is shipped as a copy of that file; a link to a
folder, or to anything outside the workspace, is refused (`BadInput`), since the copy would
either miss it or ship files from elsewhere. Leave such links out with `.pmlignore`.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import posixpath
import re
import shutil
import stat
import sys
import tempfile

from pml_trainer.errors import BadInput

EXCLUDED = (".git", ".venv", "__pycache__")  # folders left out wherever they are
EXCLUDED_AT_TOP = ("runs",)  # pmlctl's default model dirs: runs/<job name>
EXCLUDED_SUFFIXES = (".pyc",)
IGNORE_FILES = (".pmlignore", ".dockerignore")  # the first one present is in force
MAX_MB_VARIABLE = "PML_WORKSPACE_MAX_MB"
DEFAULT_MAX_MB = 50.0
CACHE_VARIABLE = "PML_WORKSPACE_CACHE"
REQUIREMENTS = "requirements.txt"
SECRET_HELP = (
    "name each in .pmlignore to leave it out, and give the job credentials through a Secret "
    "(`credentials:` in the job spec) or the environment instead"
)
# Files whose names say what they hold: environment files and private keys. `.env.example` and the
# like are templates, committed on purpose; `id_rsa.pub` is a public key.
_SECRET_NAME = re.compile(
    r"^(\.env(\..+)?|.+\.(pem|key|p12|pfx)|\.netrc|\.git-credentials|id_(rsa|dsa|ecdsa|ed25519)(?!.*\.pub$).*)$", re.I
)
_TEMPLATE = re.compile(r"\.(example|sample|template|dist)$")
_JSON_LIMIT = 1 << 20  # a service-account key is a few KB; larger JSON files are data
_CHUNK = 1 << 20


class _Pattern:
    """One line of an ignore file, as a regular expression over a POSIX path relative to the top."""

    def __init__(self, line: str):
        self.negated = line.startswith("!")
        text = line[1:] if self.negated else line
        self.folders_only = text.endswith("/")
        text = posixpath.normpath(text.strip("/")) if text.strip("/") else "."
        self.regex = re.compile(_translate(text))

    def matches(self, path: str, is_folder: bool) -> bool:
        """The path itself, or any folder above it, as MatchesOrParentMatches does."""
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        if is_folder or not self.folders_only:
            candidates.append(path)
        return any(self.regex.match(candidate) for candidate in candidates)


def _translate(pattern: str) -> str:
    """A glob of patternmatcher's `compile`, as a Python regular expression."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # `**/` is any number of folders, none included
                i += 1
                out.append("(.*/)?")
            else:
                out.append(".*")
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif char in "[]":
            out.append(char)
        else:
            out.append(re.escape(char))
        i += 1
    return "^" + "".join(out) + "$"


class _Rules:
    """The patterns of the ignore file in force, in order."""

    def __init__(self, root: pathlib.Path):
        self.file = next((name for name in IGNORE_FILES if (root / name).is_file()), None)
        self.patterns: list[_Pattern] = []
        if self.file is None:
            return
        for number, raw in enumerate((root / self.file).read_text(errors="replace").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line == "!":
                raise BadInput(f"{root / self.file} line {number}: a lone `!` names nothing; remove it")
            try:
                self.patterns.append(_Pattern(line))
            except re.error as err:
                raise BadInput(f"{root / self.file} line {number}: {line!r} is not a pattern ({err})") from None

    def excluded(self, path: str, is_folder: bool) -> bool:
        if path == self.file:
            return False
        left_out = False
        for pattern in self.patterns:
            if pattern.negated == left_out and pattern.matches(path, is_folder):
                left_out = not pattern.negated
        return left_out

    def may_skip(self, folder: str) -> bool:
        """Whether nothing below a left-out folder can be taken back, so it need not be walked
        (patternmatcher's callers skip such a folder only when there are no `!` patterns)."""
        return not any(p.negated for p in self.patterns) and self.excluded(folder, is_folder=True)


def files(root: pathlib.Path) -> list[str]:
    """The files to ship, as sorted POSIX paths relative to `root`; `BadInput` for a link that
    cannot be shipped, or anything that is neither a file nor a folder."""
    root = pathlib.Path(root)
    rules = _Rules(root)
    real_root = root.resolve()
    found = []
    for folder, subfolders, names in os.walk(root):
        here = pathlib.Path(folder).relative_to(root).as_posix()
        prefix = "" if here == "." else here + "/"
        kept = []
        for name in sorted(subfolders):
            path = prefix + name
            if name in EXCLUDED or (not prefix and name in EXCLUDED_AT_TOP):
                continue
            if os.path.islink(os.path.join(folder, name)):
                if not rules.excluded(path, is_folder=True):
                    raise BadInput(
                        f"workspace {root}: {path} is a link to a folder; copy the folder in, or leave the "
                        "link out with a line in .pmlignore"
                    )
                continue
            if not rules.may_skip(path):
                kept.append(name)
        subfolders[:] = kept
        for name in names:
            path = prefix + name
            if name.endswith(EXCLUDED_SUFFIXES) or rules.excluded(path, is_folder=False):
                continue
            _shippable(root, real_root, path)
            found.append(path)
    return sorted(found)


def _shippable(root: pathlib.Path, real_root: pathlib.Path, path: str) -> None:
    full = root / path
    if full.is_symlink():
        target = full.resolve()
        if not target.is_relative_to(real_root) or not target.is_file():
            raise BadInput(
                f"workspace {root}: {path} is a link to {target}, outside the workspace or not a file; "
                "copy the file in, or leave the link out with a line in .pmlignore"
            )
    elif not stat.S_ISREG(full.lstat().st_mode):
        raise BadInput(
            f"workspace {root}: {path} is neither a file nor a folder; leave it out with a line in .pmlignore"
        )


def digest(root: pathlib.Path) -> str:
    """`sha256:<hex>` over each shipped file's path, executable bit and content, in order: the
    same on every machine, and the same for a snapshot as for its source."""
    root = pathlib.Path(root)
    total = hashlib.sha256()
    for path in files(root):
        full = root / path
        executable = os.stat(full).st_mode & 0o111
        total.update(path.encode("utf-8", "surrogateescape") + b"\0" + (b"x" if executable else b"-") + b"\0")
        total.update(_file_hash(full) + b"\n")
    return "sha256:" + total.hexdigest()


def _file_hash(path: pathlib.Path) -> bytes:
    content = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            content.update(chunk)
    return content.digest()


def check(root: pathlib.Path) -> None:
    """Refuse, in one line, a workspace that is missing, holds obvious secrets, or is over the cap."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise BadInput(f"workspace {root}: no such folder; give --workspace the folder that holds your task's code")
    shipped = files(root)
    secrets = [path for path in shipped if _is_secret(root, path)]
    if secrets:
        named = ", ".join(secrets[:3]) + (f" and {len(secrets) - 3} more" if len(secrets) > 3 else "")
        verb = "looks like a secret" if len(secrets) == 1 else "look like secrets"
        raise BadInput(f"workspace {root}: {named} {verb}, which would be shipped with the code; {SECRET_HELP}")
    cap = _max_mb()
    sizes: dict[str, int] = {}
    for path in shipped:
        top, sep, _ = path.partition("/")
        key = top + "/" if sep else top
        sizes[key] = sizes.get(key, 0) + (root / path).stat().st_size
    total = sum(sizes.values())
    if total > cap * 1e6:
        largest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:3]
        named = ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in largest)
        raise BadInput(
            f"workspace {root} holds {total / 1e6:.1f} MB to ship, over the {cap:g} MB cap; the largest: {named}; "
            f"leave out what the task does not import with lines in {root / '.pmlignore'}, or raise {MAX_MB_VARIABLE}"
        )


def _max_mb() -> float:
    given = os.environ.get(MAX_MB_VARIABLE)
    if given is None:
        return DEFAULT_MAX_MB
    try:
        value = float(given)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise BadInput(f"{MAX_MB_VARIABLE}={given!r}: give a number of megabytes above 0, such as 200")
    return value


def _is_secret(root: pathlib.Path, path: str) -> bool:
    name = posixpath.basename(path)
    if _SECRET_NAME.match(name) and not _TEMPLATE.search(name):
        return True
    if name == "credentials" or path.startswith(".aws/") or "/.aws/" in path:
        return "aws_secret_access_key" in _head(root / path).lower()
    if name.endswith(".json") and (root / path).stat().st_size <= _JSON_LIMIT:
        text = _head(root / path)
        return '"private_key"' in text and re.search(r'"type"\s*:\s*"service_account"', text) is not None
    return False


def _head(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        return f.read(_JSON_LIMIT).decode(errors="replace")


def cache_root() -> pathlib.Path:
    default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "parallel-ml"
    return pathlib.Path(os.environ.get(CACHE_VARIABLE, default / "workspaces"))


def snapshot_path(code_digest: str, cache: pathlib.Path | None = None) -> pathlib.Path:
    """Where the snapshot of a digest is, made or not."""
    return (cache or cache_root()) / code_digest.removeprefix("sha256:")


def snapshot(root: pathlib.Path, cache_root: pathlib.Path | None = None) -> pathlib.Path:
    """A read-only copy of the shipped files under `<cache>/<digest hex>/`, made once per digest.

    The copy is made in a folder of its own beside it and renamed into place when complete, so a
    snapshot is either whole or absent; two submits of one digest at once both end with it."""
    root = pathlib.Path(root)
    expected = digest(root)
    final = snapshot_path(expected, cache_root)
    if final.is_dir():
        _verify(final, expected)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name[:12]}-", dir=final.parent))
    try:
        for path in files(root):
            copy = partial / path
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / path, copy)
            copy.chmod(0o555 if os.stat(root / path).st_mode & 0o111 else 0o444)
        if digest(partial) != expected:
            raise BadInput(f"workspace {root}: files changed while it was copied; submit again once they are saved")
        _read_only(partial)
        try:
            partial.rename(final)
        except OSError:
            if not final.is_dir():  # not the other submit's snapshot of the same digest: a real failure
                raise
    finally:
        if partial.exists():
            _remove(partial)
    return final


def _verify(snapshot: pathlib.Path, expected: str) -> None:
    """A snapshot is never written to, but a user may have half removed one."""
    if digest(snapshot) != expected:
        raise BadInput(
            f"snapshot {snapshot} no longer holds {expected}; remove it (chmod -R u+w {snapshot} && "
            f"rm -rf {snapshot}) and submit again"
        )


def _read_only(folder: pathlib.Path) -> None:
    for current, _, _ in sorted(os.walk(folder), reverse=True):  # the deepest first: a parent last
        os.chmod(current, 0o555)


def _remove(folder: pathlib.Path) -> None:
    for current, _, _ in os.walk(folder):
        os.chmod(current, 0o755)
    shutil.rmtree(folder)


def unmet_requirements(root: pathlib.Path) -> str | None:
    """The first requirement of the workspace's requirements.txt that this Python does not meet,
    with the pip command that would meet it, in one line; None when all are met or there is none.
    Nothing is ever installed."""
    path = pathlib.Path(root) / REQUIREMENTS
    if not path.is_file():
        return None
    fix = f"install them with `{sys.executable} -m pip install -r {path}` (pmlctl never installs anything)"
    for where, line in _requirement_lines(path):
        problem = _unmet(line)
        if problem:
            return f"{where}: {problem}; {fix}"
    return None


def _requirement_lines(path: pathlib.Path, seen: frozenset[pathlib.Path] = frozenset()) -> list[tuple[str, str]]:
    """(file:line, requirement) for each requirement, following `-r FILE`; other options (an index,
    `-e`, hashes) say nothing about what is installed and are passed over."""
    found = []
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        option, _, value = line.partition(" ")
        if option in ("-r", "--requirement") or line.startswith("--requirement="):
            nested = (path.parent / (value or line.partition("=")[2]).strip()).resolve()
            if nested not in seen and nested.is_file():
                found += _requirement_lines(nested, seen | {path.resolve()})
        elif not line.startswith("-"):
            found.append((f"{path}:{number}", line.split(" --")[0].strip()))
    return found


def _unmet(line: str) -> str | None:
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(line)
    except InvalidRequirement as err:
        return f"{line!r} is not a requirement pip would read ({str(err).splitlines()[0]})"
    if requirement.marker is not None and not requirement.marker.evaluate():
        return None
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return f"{requirement} is not installed for {sys.executable}"
    if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
        return f"{requirement} is not met: {requirement.name} {installed} is installed for {sys.executable}"
    return None
