"""MkDocs hooks: the parts of the site generated from the code and the committed results.

A page asks for a generated part with an HTML comment on a line of its own:

    <!-- gen:cli -->                        every `slimc` command's --help (from the argparse parser)
    <!-- gen:rules -->                      `slimc rules --markdown` (shape rules + probed ops)
    <!-- gen:cuda -->                       the CUDA latency table, or a line saying there is none yet
    <!-- gen:table FILE [N] -->             the N-th (1-based, default 1) markdown table of
                                            benchmarks/results/FILE
    <!-- gen:table FILE N "HEADING" -->     the N-th table under the heading that starts with HEADING

so no measured number and no list of options is typed into a page. Every file under
benchmarks/results/ (tables, JSON, plots) is published at results/ in the site.
tests/test_docs.py builds the site with these hooks and checks the pages against the code.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DIRECTIVE = re.compile(r"^<!-- gen:(?P<name>\w+)(?P<args>[^\n]*?) -->$", re.M)
PUBLISHED = {".png", ".md", ".json"}


class DocsError(Exception):
    """A directive the hook cannot fill (a results file or table that does not exist)."""


def cli_reference() -> str:
    """Each subcommand's --help, in the order the parser defines them."""
    from slimc.cli import _parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help text to the terminal width
    parser = _parser()
    sub = next(a for a in parser._actions if a.choices and a.dest == "cmd")
    parts = ["```text", parser.format_help().rstrip(), "```"]
    for name, sp in sub.choices.items():
        parts += ["", f"## slimc {name}", "", "```text", sp.format_help().rstrip(), "```"]
    return "\n".join(parts)


def rules_table() -> str:
    from slimc.cli import rules_markdown

    return rules_markdown()


def cuda_table(rel: str) -> str:
    import runpy

    gpu_check = runpy.run_path(str(ROOT / "benchmarks" / "gpu_check.py"), run_name="gpu_check")
    return gpu_check["readme_block"](RESULTS / "latency_cuda.md").replace("benchmarks/results/", rel)


def tables(text: str) -> list[str]:
    """The markdown tables of ``text``, in order."""
    found, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            found.append("\n".join(rows))
            rows = []
    return found


def results_table(args: list[str]) -> str:
    name, n = args[0], int(args[1]) if len(args) > 1 else 1
    path = RESULTS / name
    if not path.is_file():
        raise DocsError(f"gen:table: no results file benchmarks/results/{name}")
    text = path.read_text()
    if len(args) > 2:
        heads = [m.start() for m in re.finditer(r"^#+ " + re.escape(args[2]), text, re.M)]
        if not heads:
            raise DocsError(f"gen:table: no heading {args[2]!r} in benchmarks/results/{name}")
        text = text[heads[0]:]
        body = text.index("\n") + 1 if "\n" in text else len(text)
        nxt = re.search(r"^#+ ", text[body:], re.M)
        text = text[: body + nxt.start()] if nxt else text
    found = tables(text)
    if not 1 <= n <= len(found):
        raise DocsError(f"gen:table: benchmarks/results/{name} has {len(found)} table(s), not {n}")
    return found[n - 1]


def expand(markdown: str, src_uri: str = "index.md") -> str:
    """``markdown`` with every directive replaced by what it generates."""
    rel = "../" * src_uri.count("/") + "results/"

    def fill(m: re.Match) -> str:
        name, args = m["name"], shlex.split(m["args"])
        if name == "cli":
            return cli_reference()
        if name == "rules":
            return rules_table()
        if name == "cuda":
            return cuda_table(rel)
        if name == "table":
            return results_table(args)
        raise DocsError(f"unknown directive gen:{name} in {src_uri}")

    return DIRECTIVE.sub(fill, markdown)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 (the hook's signature)
    from mkdocs.exceptions import PluginError

    try:
        return expand(markdown, page.file.src_uri)
    except DocsError as e:
        raise PluginError(f"{page.file.src_uri}: {e}") from None


ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):(?=<code)")


def on_page_content(html, page, config, files):  # noqa: ARG001 (the hook's signature)
    """The docstrings name code with Sphinx roles (``:func:`slimc.load` ``); the API reference
    shows the name as code, without the role."""
    return ROLE.sub("", html)


def on_files(files, config):
    """Publish benchmarks/results/ at results/ (tables, records and plots the pages link to)."""
    from mkdocs.structure.files import File

    for path in sorted(RESULTS.rglob("*")):
        if path.suffix in PUBLISHED and path.is_file():
            uri = "results/" + path.relative_to(RESULTS).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
