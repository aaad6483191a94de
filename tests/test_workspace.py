"""A workspace (pml_trainer/workspace.py): which files are shipped, the digest that names them, the
refusals of a folder that must not be shipped, the read-only snapshot, and requirements.txt."""

from __future__ import annotations

import os
import pathlib
import shutil
import stat
import sys
import threading

import pytest

from pml_trainer import workspace
from pml_trainer.errors import BadInput


def write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def refusal(root: pathlib.Path, action=workspace.check) -> str:
    with pytest.raises(BadInput) as caught:
        action(root)
    (line,) = str(caught.value).splitlines()
    return line


# --- what is shipped -------------------------------------------------------------------------------


def test_what_is_left_out_follows_dockerignore_rules(tmp_path):
    write(
        tmp_path,
        {
            "t.py": "",
            "pkg/__init__.py": "",
            "pkg/__pycache__/m.cpython-311.pyc": "",
            "stale.pyc": "",
            ".git/HEAD": "",
            ".venv/bin/python": "",
            "sub/.venv/lib.py": "",
            "runs/job/metrics.jsonl": "",
            "pkg/runs/kept.py": "",  # runs/ is left out at the top only: pmlctl's model dirs
            "top.log": "",
            "pkg/deep.log": "",  # `*.log` stays within the top folder, as in .dockerignore
            "a/b/data.csv": "",
            "data/big.bin": "",
            "data/keep/labels.txt": "",
            "build": "",  # a file: `build/` names folders only (gitignore's rule)
            "out/build/x.o": "",  # patterns are anchored at the top: `build/` is ./build only
            "notes/draft.md": "",
            "notes/final.md": "",
        },
    )
    (tmp_path / ".pmlignore").write_text(
        "# comments and blank lines are skipped\n\n*.log\n**/*.csv\n/data\n!data/keep\nbuild/\nnotes\n!notes/final.md\n"
    )
    assert workspace.files(tmp_path) == [
        ".pmlignore",
        "build",
        "data/keep/labels.txt",
        "notes/final.md",
        "out/build/x.o",
        "pkg/__init__.py",
        "pkg/deep.log",
        "pkg/runs/kept.py",
        "t.py",
    ]


def test_pmlignore_wins_over_dockerignore_and_the_rules_in_force_are_shipped(tmp_path):
    write(tmp_path, {"t.py": "", "a.txt": "", "b.txt": "", ".dockerignore": "a.txt\n.dockerignore\n"})
    assert workspace.files(tmp_path) == [".dockerignore", "b.txt", "t.py"]  # it may not leave itself out
    (tmp_path / ".pmlignore").write_text("b.txt\n")
    assert workspace.files(tmp_path) == [".dockerignore", ".pmlignore", "a.txt", "t.py"]


def test_a_link_inside_is_shipped_and_one_pointing_out_or_to_a_folder_is_refused(tmp_path):
    root = write(tmp_path / "ws", {"t.py": "x = 1\n", "lib/real.py": ""})
    write(tmp_path, {"outside.py": ""})
    (root / "alias.py").symlink_to("lib/real.py")
    assert workspace.files(root) == ["alias.py", "lib/real.py", "t.py"]

    (root / "escape.py").symlink_to(tmp_path / "outside.py")
    line = refusal(root, workspace.files)
    assert "escape.py is a link to" in line and "outside the workspace" in line and ".pmlignore" in line
    (root / ".pmlignore").write_text("escape.py\n")
    assert workspace.files(root) == [".pmlignore", "alias.py", "lib/real.py", "t.py"]

    (root / "shortcut").symlink_to("lib")
    assert "shortcut is a link to a folder" in refusal(root, workspace.files)


# --- the digest ------------------------------------------------------------------------------------


def test_the_digest_is_the_same_on_any_machine(tmp_path):
    """Its recipe is fixed: path, executable bit and content of each shipped file, in order. A value
    recorded in run.json today must name the same code tomorrow, on another machine."""
    write(tmp_path, {"t.py": "VERSION = 1\n", "pkg/__init__.py": ""})
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    assert workspace.digest(tmp_path) == "sha256:07d7448b68f4a8fa5b5c8ace71182145ffb5d49e9d990367b19c03a12a74c29a"


def test_the_snapshot_has_its_sources_digest_until_the_code_changes(tmp_path):
    source = write(tmp_path / "ws", {"t.py": "VERSION = 1\n", "pkg/__init__.py": "", "pkg/mod.py": "A = 1\n"})
    (source / "tool.sh").write_text("#!/bin/sh\n")
    (source / "tool.sh").chmod(0o755)
    first = workspace.digest(source)
    copy = workspace.snapshot(source, tmp_path / "cache")
    assert workspace.digest(copy) == first and copy.name == first.removeprefix("sha256:")

    # Python writes __pycache__ wherever it may (root may anywhere, a read-only snapshot included).
    (copy / "pkg").chmod(0o755)
    write(copy, {"pkg/__pycache__/mod.cpython-311.pyc": "bytecode"})
    assert workspace.digest(copy) == first

    (source / "pkg" / "mod.py").write_text("A = 2\n")
    assert workspace.digest(source) != first
    (source / "pkg" / "mod.py").write_text("A = 1\n")
    assert workspace.digest(source) == first
    (source / "tool.sh").chmod(0o644)
    assert workspace.digest(source) != first  # the executable bit is part of what is shipped


# --- refusals --------------------------------------------------------------------------------------


def test_a_missing_folder_is_refused(tmp_path):
    line = refusal(tmp_path / "nope")
    assert "nope: no such folder" in line and "--workspace" in line


def test_a_workspace_over_the_cap_names_its_largest_folders(tmp_path, monkeypatch):
    write(
        tmp_path, {"t.py": "", "models/w.bin": "m" * 300_000, "data/a.bin": "d" * 900_000, "data/b.bin": "d" * 600_000}
    )
    monkeypatch.setenv(workspace.MAX_MB_VARIABLE, "1")
    line = refusal(tmp_path)
    assert "holds 1.8 MB to ship, over the 1 MB cap" in line
    assert "the largest: data/ (1.5 MB), models/ (0.3 MB), t.py (0.0 MB)" in line
    assert str(tmp_path / ".pmlignore") in line and workspace.MAX_MB_VARIABLE in line

    (tmp_path / ".pmlignore").write_text("data/\n")
    workspace.check(tmp_path)  # what is left out does not count

    monkeypatch.setenv(workspace.MAX_MB_VARIABLE, "lots")
    assert "PML_WORKSPACE_MAX_MB='lots': give a number of megabytes above 0" in refusal(tmp_path)


SERVICE_ACCOUNT_KEY = '{"type": "service_account", "project_id": "p", "private_key": "-----BEGIN PRIVATE KEY-----"}'


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (".env", "TOKEN=abc\n"),
        ("config/.env.production", "TOKEN=abc\n"),
        ("certs/server.pem", "-----BEGIN CERTIFICATE-----\n"),
        ("tls.key", "-----BEGIN PRIVATE KEY-----\n"),
        ("keys/id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        ("sa/trainer-1234.json", SERVICE_ACCOUNT_KEY),
        (".aws/credentials", "[default]\naws_access_key_id = A\naws_secret_access_key = S\n"),
        ("credentials", "[default]\naws_secret_access_key = S\n"),
        ("certs/SERVER.PEM", "-----BEGIN CERTIFICATE-----\n"),  # the names were matched case by case
        ("client.p12", "binary"),
        (".netrc", "machine example.com login me password p\n"),
        (".git-credentials", "https://me:token@example.com\n"),
    ],
)
def test_obvious_secrets_are_refused_with_the_fix(tmp_path, path, text):
    write(tmp_path, {"t.py": "", path: text})
    line = refusal(tmp_path)
    assert f": {path} looks like a secret" in line
    assert ".pmlignore" in line and "Secret (`credentials:` in the job spec)" in line
    (tmp_path / ".pmlignore").write_text(path + "\n")
    workspace.check(tmp_path)


def test_look_alikes_of_secrets_are_shipped(tmp_path):
    write(
        tmp_path,
        {
            "t.py": "",
            ".env.example": "TOKEN=\n",
            "keys/id_rsa.pub": "ssh-rsa AAAA\n",
            "schema.json": '{"type": "service_account", "fields": []}',
            "credentials": "[default]\nregion = eu\n",
        },
    )
    workspace.check(tmp_path)


def test_several_secrets_are_named_in_one_line(tmp_path):
    write(tmp_path, {"t.py": "", ".env": "", "a.pem": "", "b.pem": "", "c.key": ""})
    assert ": .env, a.pem, b.pem and 1 more look like secrets" in refusal(tmp_path)


# --- the snapshot ----------------------------------------------------------------------------------


def test_the_snapshot_is_read_only_and_made_once(tmp_path):
    source = write(tmp_path / "ws", {"t.py": "", "pkg/mod.py": ""})
    (source / "tool.sh").write_text("#!/bin/sh\n")
    (source / "tool.sh").chmod(0o755)
    copy = workspace.snapshot(source, tmp_path / "cache")
    modes = {path.relative_to(copy).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in [copy, *copy.rglob("*")]}
    assert modes == {".": 0o555, "pkg": 0o555, "pkg/mod.py": 0o444, "t.py": 0o444, "tool.sh": 0o555}
    inode = (copy / "t.py").stat().st_ino
    assert workspace.snapshot(source, tmp_path / "cache") == copy and (copy / "t.py").stat().st_ino == inode
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [copy.name]  # no partial copy left


def test_two_snapshots_of_one_digest_at_once_both_end_with_it(tmp_path, monkeypatch):
    """Both copy in folders of their own; the first rename wins, the second finds it there."""
    source = write(tmp_path / "ws", {"t.py": "VERSION = 1\n"})
    both_copied = threading.Barrier(2, timeout=30)
    rename = pathlib.Path.rename

    def rename_together(self, target):
        both_copied.wait()
        return rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", rename_together)
    made: list[object] = []
    threads = [
        threading.Thread(target=lambda: made.append(workspace.snapshot(source, tmp_path / "cache"))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(made) == 2 and made[0] == made[1]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [made[0].name]
    assert workspace.digest(made[0]) == workspace.digest(source)


def test_a_file_changed_while_it_is_copied_is_refused(tmp_path, monkeypatch):
    source = write(tmp_path / "ws", {"a.py": "A = 1\n", "b.py": "B = 1\n"})
    copyfile = shutil.copyfile

    def edit_b_while_copying_a(src, dst):
        if pathlib.Path(src).name == "a.py":
            (source / "b.py").write_text("B = 2\n")
        return copyfile(src, dst)

    monkeypatch.setattr(workspace.shutil, "copyfile", edit_b_while_copying_a)
    assert "files changed while it was copied; submit again" in refusal(
        source, lambda root: workspace.snapshot(root, tmp_path / "cache")
    )
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_snapshot_someone_half_removed_is_not_used(tmp_path):
    source = write(tmp_path / "ws", {"a.py": "", "b.py": ""})
    copy = workspace.snapshot(source, tmp_path / "cache")
    copy.chmod(0o755)
    (copy / "b.py").unlink()
    line = refusal(source, lambda root: workspace.snapshot(root, tmp_path / "cache"))
    assert f"snapshot {copy} no longer holds" in line and f"rm -rf {copy}" in line


# --- requirements.txt ------------------------------------------------------------------------------


def test_met_requirements_say_nothing(tmp_path):
    write(
        tmp_path,
        {
            "requirements.txt": "# what the task imports\n--index-url https://example.invalid/simple\n"
            "pyyaml>=5  # a comment\npydantic[email] >= 2 ; python_version >= '3'\n"
            "surely-not-a-package-pml == 1 ; python_version < '3'\n-r more.txt\n",
            "more.txt": "typer\n",
        },
    )
    assert workspace.unmet_requirements(tmp_path) is None
    assert workspace.unmet_requirements(tmp_path / "nothing-here") is None


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("surely-not-a-package-pml==1.0", "surely-not-a-package-pml==1.0 is not installed for"),
        ("pyyaml<1", "pyyaml<1 is not met: pyyaml "),
        ("pyyaml>>5", "'pyyaml>>5' is not a requirement pip would read"),
    ],
)
def test_an_unmet_requirement_is_named_with_the_pip_command(tmp_path, line, said):
    write(tmp_path, {"requirements.txt": f"typer\n{line}\n"})
    message = workspace.unmet_requirements(tmp_path)
    assert message is not None and "\n" not in message
    assert message.startswith(f"{tmp_path / 'requirements.txt'}:2: {said}")
    assert f"`{sys.executable} -m pip install -r {tmp_path / 'requirements.txt'}`" in message
    assert "never installs" in message


def test_the_cache_is_where_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.delenv(workspace.CACHE_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert workspace.cache_root() == tmp_path / "xdg" / "parallel-ml" / "workspaces"
    monkeypatch.setenv(workspace.CACHE_VARIABLE, str(tmp_path / "mine"))
    assert workspace.snapshot_path("sha256:ab12") == tmp_path / "mine" / "ab12"
    assert os.fspath(workspace.snapshot_path("sha256:ab12", tmp_path)) == str(tmp_path / "ab12")
