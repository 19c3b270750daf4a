"""Run the examples of a markdown page, in order, and say where the page and the code disagree.

What runs, by the fence's language:

* ``bash`` / ``sh`` / ``shell``: one ``bash -euo pipefail`` script (every command must succeed);
* ``console``: ``$ command`` lines, each followed by the output it must print (stdout and
  stderr together; a command may fail: errors are what such blocks often show);
* ``python``: executed in one namespace per page (blocks that share state run in order).

Every page runs in its own temporary folder, holding ``examples/`` of the repository, with this
Python's ``bin/`` first on PATH (so ``slimc`` and ``python`` are the project's).

An HTML comment on the line before a block changes what happens to it:

* ``<!-- skip: reason -->``: not run (the reason is required);
* ``<!-- slow: reason -->``: run only by the slow suite (``pytest -m slow``; a reason is required);
* ``<!-- output -->`` before a ``text`` block: the output of the block run just before must match it;
* ``<!-- file: NAME -->``: the block is written to NAME in the page's folder, not run (a model.py,
  a config list) — the blocks after it use it.

Output matching: trailing spaces are ignored; ``...`` in a line matches any text, a line that is
only ``...`` matches any number of lines.

A command that two pages show alike (the README's commands are the tutorials' first steps) runs
once per test session when a ``cache`` folder is given: a ``bash`` block of plain one-line
commands runs line by line, and each command's exit status, output and the files it wrote are
kept under the hash of the command (its words, without comments) and of every file in the page's
folder before it ran; a page that reaches the same command in the same state gets them back.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)
DIRECTIVE = re.compile(r"<!-- (?P<kind>skip|slow|output|file)(?::\s*(?P<arg>.*?))? -->\s*$")
SHELL = {"bash", "sh", "shell"}
RUN = SHELL | {"console", "python"}
TIMEOUT_S = 600


@dataclass
class Block:
    lang: str
    body: str
    line: int  # 1-based line of the opening fence
    directive: str = ""
    arg: str = ""


class ExampleError(AssertionError):
    """A block of a page that failed or printed what the page does not show."""


def blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` with the directive on the line before each, if any."""
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        d = DIRECTIVE.search(before)
        out.append(Block(m["lang"].lower(), m["body"], line, d["kind"] if d else "", (d["arg"] or "") if d else ""))
    for b in out:
        if b.directive in ("skip", "slow") and not b.arg.strip():
            raise ExampleError(f"line {b.line}: <!-- {b.directive} --> needs a reason: <!-- {b.directive}: why -->")
    return out


def matches(expected: str, actual: str) -> bool:
    """``actual`` is what ``expected`` shows (``...`` as a wildcard, trailing spaces ignored)."""
    exp = [ln.rstrip() for ln in expected.strip("\n").splitlines()]
    act = [ln.rstrip() for ln in actual.strip("\n").splitlines()]
    pattern = "".join(r"(?:.*\n)*?" if ln.strip() == "..." else
                        ".*".join(re.escape(p) for p in ln.split("...")) + r"\n" for ln in exp)
    return re.fullmatch(pattern, "\n".join(act) + "\n") is not None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("COLUMNS", None)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _shell(script: str, cwd: Path, strict: bool = True) -> tuple[int, str]:
    p = subprocess.run(["bash", *(["-euo", "pipefail"] if strict else []), "-c", script], cwd=cwd, env=_env(), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
    return p.returncode, p.stdout


def _manifest(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: its path → the hash of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


class ShellCache:
    """The results of ``bash`` blocks, keyed by their text and the state of the folder they ran in."""

    def __init__(self, root: Path):
        self.root = root

    def key(self, script: str, folder: Path) -> tuple[str, dict[str, str]]:
        before = _manifest(folder)
        return hashlib.sha256((script + repr(sorted(before.items()))).encode()).hexdigest(), before

    def get(self, key: str, folder: Path) -> tuple[int, str] | None:
        entry = self.root / key
        if not (entry / "output.txt").is_file():
            return None
        shutil.copytree(entry / "files", folder, dirs_exist_ok=True)
        return int((entry / "rc").read_text()), (entry / "output.txt").read_text()

    def put(self, key: str, folder: Path, before: dict[str, str], rc: int, output: str) -> None:
        tmp = self.root / f"{key}.{os.getpid()}.tmp"
        for rel, digest in _manifest(folder).items():
            if before.get(rel) != digest:
                (tmp / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / rel, tmp / "files" / rel)
        (tmp / "files").mkdir(parents=True, exist_ok=True)
        (tmp / "output.txt").write_text(output)
        (tmp / "rc").write_text(str(rc))
        try:
            tmp.rename(self.root / key)  # another worker may have stored it first: either will do
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)


class Page:
    """One page's examples, run in order in ``workdir``."""

    def __init__(self, path: Path, workdir: Path, text: str | None = None, slow: bool = False,
                 cache: Path | None = None):
        self.path, self.workdir, self.slow = path, workdir, slow
        self.cache = ShellCache(cache) if cache else None
        self.text = path.read_text() if text is None else text
        self.namespace: dict = {"__name__": "__docs__"}
        self.last_output = ""

    def where(self, b: Block) -> str:
        return f"{self.path.name}:{b.line}"

    def run(self) -> int:
        """Runs every block; returns how many ran. Raises ExampleError at the first that fails.
        A page runs as in a fresh Python session: no analysis kept from an earlier compile."""
        from slimc import analysis

        analysis.clear()
        shutil.copytree(ROOT / "examples", self.workdir / "examples", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        ran, skipped = 0, False
        for b in blocks(self.text):
            if b.directive == "skip" or (b.directive == "slow" and not self.slow) or (b.directive == "output" and skipped):
                skipped = b.directive != "output"
                continue
            skipped = False
            if b.directive == "file":
                (self.workdir / b.arg).parent.mkdir(parents=True, exist_ok=True)
                (self.workdir / b.arg).write_text(b.body)
            elif b.directive == "output":
                if not matches(b.body, self.last_output):
                    raise ExampleError(f"{self.where(b)}: the block before printed\n{self.last_output}\n"
                                       f"--- but the page shows ---\n{b.body}")
            elif b.lang in RUN:  # plain or <!-- slow -->
                getattr(self, "_" + ("shell" if b.lang in SHELL else b.lang))(b)
                ran += 1
        return ran

    def _cached(self, cmd: str, strict: bool) -> tuple[int, str]:
        """``cmd`` run in the page's folder, or its result from the cache."""
        try:
            words = " ".join(shlex.split(cmd, comments=True)) if self.cache else ""
        except ValueError:
            words = ""
        if not words:
            return _shell(cmd, self.workdir, strict)
        # a pipeline's exit status depends on pipefail, which a bash block sets and a console block does not
        key, before = self.cache.key(f"{strict}:{words}" if "|" in words else words, self.workdir)
        hit = self.cache.get(key, self.workdir)
        if hit is not None:
            return hit
        rc, out = _shell(cmd, self.workdir, strict)
        if rc == 0 or not strict:
            self.cache.put(key, self.workdir, before, rc, out)
        return rc, out

    def _shell(self, b: Block) -> None:
        lines = [ln for ln in b.body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        one_liners = not any(ln.rstrip().endswith("\\") or "<<" in ln for ln in lines)
        out = ""
        for cmd in lines if one_liners else [b.body]:
            rc, o = self._cached(cmd, strict=True)
            out += o
            if rc:
                raise ExampleError(f"{self.where(b)}: exit status {rc}\n{cmd}\n--- output ---\n{out}")
        self.last_output = out

    def _console(self, b: Block) -> None:
        cmds: list[tuple[str, list[str]]] = []
        for ln in b.body.splitlines():
            if ln.startswith("$ "):
                cmds.append((ln[2:], []))
            elif cmds:
                cmds[-1][1].append(ln)
        for cmd, expected in cmds:
            _, out = self._cached(cmd, strict=False)
            if not matches("\n".join(expected), out):
                raise ExampleError(f"{self.where(b)}: `{cmd}` printed\n{out}\n--- but the page shows ---\n"
                                   + "\n".join(expected))
        self.last_output = ""

    def _python(self, b: Block) -> None:
        buf = io.StringIO()
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            with contextlib.redirect_stdout(buf):
                exec(compile(b.body, f"{self.path.name}:{b.line}", "exec"), self.namespace)
        except Exception as exc:
            tb = "".join(traceback.format_exception(exc))
            raise ExampleError(f"{self.where(b)}: the block raised\n{b.body}\n--- traceback ---\n{tb}") from None
        finally:
            os.chdir(cwd)
        self.last_output = buf.getvalue()
