"""The docs cannot go stale: every example of README.md and docs/ runs, the site builds with
warnings as errors, flags named in the pages exist, and measured numbers quoted in prose are
in the committed results files. The runner itself is tested on pages with planted faults."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from docs_examples import ROOT, ExampleError, Page, blocks, matches

DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _id(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _runnable(p: Path, directives: tuple[str, ...]) -> bool:
    return any(b.lang in {"bash", "sh", "shell", "console", "python"} and b.directive in directives
               for b in blocks(p.read_text()))


@pytest.fixture(scope="session")
def shell_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the session's workers: a command two pages show alike runs once."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if base.name.startswith("popen-gw") else base) / "docs-shell-cache"
    root.mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize("page", [pytest.param(p, id=_id(p)) for p in PAGES if _runnable(p, ("", "file"))])
def test_page_examples_run(page: Path, tmp_path: Path, shell_cache: Path) -> None:
    assert Page(page, tmp_path, cache=shell_cache).run() > 0


@pytest.mark.slow
@pytest.mark.parametrize("page", [pytest.param(p, id=_id(p)) for p in PAGES if _runnable(p, ("slow",))])
def test_page_examples_run_with_the_slow_ones(page: Path, tmp_path: Path) -> None:
    """Pages with examples marked <!-- slow: reason --> (a full-size model): every block, in order."""
    assert Page(page, tmp_path, slow=True).run() > 0


# --- the runner catches a page that no longer matches the code ---------------------------------

def test_runner_fails_on_a_stale_flag(tmp_path: Path) -> None:
    """README's first command, with a flag renamed as if the CLI had changed under the page."""
    readme = (ROOT / "README.md").read_text()
    cmd = next(b.body for b in blocks(readme) if b.lang == "bash" and "slimc prune" in b.body)
    first = cmd.strip().splitlines()[0]
    assert "--ratio 0.5" in first
    page = f"```bash\n{first.replace('--ratio 0.5', '--ration 0.5')}\n```\n"
    with pytest.raises(ExampleError, match="unrecognized arguments: --ration"):
        Page(ROOT / "README.md", tmp_path, text=page).run()


def test_runner_fails_on_output_the_page_does_not_show(tmp_path: Path) -> None:
    page = "```python\nprint(6 * 7)\n```\n<!-- output -->\n```text\n{}\n```\n"
    assert Page(tmp_path / "p.md", tmp_path, text=page.format("42")).run() == 1
    with pytest.raises(ExampleError, match="the page shows"):
        Page(tmp_path / "p.md", tmp_path, text=page.format("41")).run()


def test_runner_fails_on_a_raising_block_and_a_wrong_console_output(tmp_path: Path) -> None:
    with pytest.raises(ExampleError, match="NameError"):
        Page(tmp_path / "p.md", tmp_path, text="```python\nundefined_name\n```\n").run()
    with pytest.raises(ExampleError, match="printed"):
        Page(tmp_path / "p.md", tmp_path, text="```console\n$ echo hello\nhallo\n```\n").run()
    Page(tmp_path / "p.md", tmp_path, text="```console\n$ echo hello; exit 2\nhel...\n```\n").run()


def test_shell_cache_gives_back_output_and_files_for_the_same_block_and_state(tmp_path: Path) -> None:
    page = "```bash\necho $RANDOM > n.txt; cat n.txt\n```\n```python\nprint(open('n.txt').read())\n```\n"
    a, b, c = (Page(tmp_path / "p.md", tmp_path / d, text=page, cache=tmp_path / "cache") for d in "abc")
    (tmp_path / "cache").mkdir()
    a.run()
    b.run()
    n = (tmp_path / "a" / "n.txt").read_text()
    assert a.last_output == b.last_output == n + "\n" and (tmp_path / "b" / "n.txt").read_text() == n
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "other.txt").write_text("another state")  # another folder state: runs again
    c.run()
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_python_blocks_share_state_in_order_and_skip_needs_a_reason(tmp_path: Path) -> None:
    ok = ("<!-- file: m.txt -->\n```text\nseven\n```\n```python\nx = open('m.txt').read().strip()\n```\n"
          "<!-- skip: never runs -->\n```python\nraise SystemExit\n```\n```python\nprint(x)\n```\n"
          "<!-- output -->\n```text\nseven\n```\n")
    assert Page(tmp_path / "p.md", tmp_path, text=ok).run() == 2
    with pytest.raises(ExampleError, match="needs a reason"):
        blocks("<!-- skip -->\n```bash\ntrue\n```\n")


def test_output_matching() -> None:
    assert matches("a ... c\n...\nend", "a b c\nx\ny\nend\n")
    assert matches("...\n", "")
    assert not matches("a b c", "a b d")
    assert not matches("one\ntwo", "one")


# --- flags named anywhere in a page exist -------------------------------------------------------

def _options() -> dict[str, set[str]]:
    from slimc.cli import _parser

    p = _parser()
    top = {o for a in p._actions for o in a.option_strings}
    sub = next(a for a in p._actions if a.dest == "cmd")
    return {name: top | {o for a in sp._actions for o in a.option_strings} for name, sp in sub.choices.items()}


CALL = re.compile(r"slimc\s+(?P<cmd>[a-z]+)(?P<rest>[^`\n|]*)")


def stale_flags(text: str, options: dict[str, set[str]]) -> list[str]:
    """``slimc CMD … --flag`` on one line of ``text`` where CMD takes no --flag."""
    bad = []
    for m in CALL.finditer(text):
        if m["cmd"] not in options:
            continue
        rest = m["rest"].split("#", 1)[0]
        for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest):
            if flag not in options[m["cmd"]]:
                bad.append(f"slimc {m['cmd']} {flag}")
    return bad


def test_every_flag_a_page_names_exists() -> None:
    options = _options()
    bad = {_id(p): stale_flags(p.read_text(), options) for p in PAGES}
    assert not {k: v for k, v in bad.items() if v}
    assert stale_flags("run `slimc compile model.py --masks m.pth --no-verfy`", options) == ["slimc compile --no-verfy"]


# --- measured numbers in prose come from benchmarks/results/ ------------------------------------

MEASURED = re.compile(r"(?<![\w.−-])(\d+(?:,\d{3})*\.\d+)\s?(?:×|x\b|%|ms\b|s\b|min\b|GB\b|GiB\b|MB\b|M\b|B\b|k\b|pt\b|dB\b)")
#: numbers with a unit that are not measurements of ours: settings of the code (the launch-bound
#: threshold), figures published elsewhere (cited where they appear)
NOT_MEASURED = {"0.7×", "3.82M", "79.2M"}


def prose(text: str) -> str:
    """``text`` without fenced blocks, HTML comments and inline code."""
    text = re.sub(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", "", text, flags=re.M | re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _numbers(text: str, rounded: bool) -> set[str]:
    """Every number of ``text``; with ``rounded`` also rounded to 1–4 decimals and as a percentage
    of a fraction (a record's 0.4960549 reads 0.496 in prose, its accuracy 0.9911 reads 99.1)."""
    out = set()
    for tok in re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?", text):
        out.add(tok)
        if rounded:
            v = float(tok.replace(",", ""))
            out |= {f"{v:.{d}f}" for d in range(1, 5)} | ({f"{100 * v:.{d}f}" for d in range(1, 3)} if v < 1 else set())
    return out


def cited_results(text: str) -> list[Path]:
    """The results files a page draws on: its gen:table directives and its links into results/
    (with the JSON beside a table, and the records of a folder)."""
    names = re.findall(r"<!-- gen:table (\S+)", text) + re.findall(r"\((?:\.\./|benchmarks/)results/([^)#]+)\)", text)
    files = set()
    for name in names:
        path = RESULTS / name
        files |= {path, path.with_suffix(".json")}
        if path.parent != RESULTS:
            files |= set(path.parent.rglob("*.json"))
    return sorted(f for f in files if f.is_file() and f.suffix in {".md", ".json"})


def shown_outputs(text: str) -> str:
    """The outputs a page shows after its examples (checked against what they print)."""
    return "\n".join(b.body for b in blocks(text) if b.directive == "output")


def unsourced_numbers(text: str) -> list[str]:
    """Measured-looking numbers (a decimal with a unit) in the prose of ``text`` that neither the
    results files the page cites nor the outputs of its examples hold."""
    numbers = _numbers(shown_outputs(text), rounded=False)
    for f in cited_results(text):
        numbers |= _numbers(f.read_text(), rounded=f.suffix == ".json")
    return [m[0] for m in MEASURED.finditer(prose(text))
            if m[0].replace(" ", "") not in NOT_MEASURED and m[1] not in numbers]


def test_measured_numbers_in_prose_are_in_the_results_files() -> None:
    bad = {_id(p): unsourced_numbers(p.read_text()) for p in PAGES}
    assert not {k: v for k, v in bad.items() if v}
    page = "<!-- gen:table latency_cpu.md -->\nVGG-16 runs {}× faster (`--ratio 0.5`)."
    assert unsourced_numbers(page.format("3.52")) == [] and unsourced_numbers(page.format("3.53")) == ["3.53×"]
    assert unsourced_numbers("VGG-16 runs 3.52× faster.") == ["3.52×"]  # no results file cited


# --- the site ---------------------------------------------------------------------------------

def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_parts_are_the_code_and_the_results() -> None:
    from slimc.cli import rules_markdown

    hooks = _hooks()
    rules = hooks.expand((DOCS / "reference" / "rules.md").read_text(), "reference/rules.md")
    assert rules_markdown().strip() in rules
    cli = hooks.expand((DOCS / "reference" / "cli.md").read_text(), "reference/cli.md")
    assert "## slimc compile" in cli and "--allow-empty" in cli
    latency = hooks.expand((DOCS / "benchmarks" / "latency.md").read_text(), "benchmarks/latency.md")
    assert "<!-- gen:" not in latency and "| vgg16 |" in latency
    cuda = hooks.cuda_table("../results/")  # gpu_check's own block: its table, or the line saying there is none
    assert cuda.strip() and cuda in latency
    with pytest.raises(hooks.DocsError, match="no results file"):
        hooks.expand("<!-- gen:table nothing_here.md -->", "x.md")


def test_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' (make test and make docs do)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "slimc.load" in api and not re.search(r":(func|class|meth|mod):<code", api)  # roles rendered as code


def test_readme_links_resolve() -> None:
    """README.md is read on GitHub, outside the site: its relative links and images must exist."""
    text = (ROOT / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert targets and not [t for t in targets if t and not (ROOT / t).exists()]


def test_readme_benchmark_table_rows_are_rows_of_the_results_file() -> None:
    """README is read on GitHub, where no hook expands a table: its benchmark rows are copied,
    so each must still be a row of the results file it links to."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    (name,) = set(re.findall(r"\(benchmarks/results/([^)#]+\.md)\)", section))
    rows = {ln for ln in (RESULTS / name).read_text().splitlines() if ln.startswith("| ")}
    mine = [ln for ln in section.splitlines() if ln.startswith("| ")]
    assert len(mine) > 3 and not [ln for ln in mine if ln not in rows], [ln for ln in mine if ln not in rows]
