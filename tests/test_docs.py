"""The README and docs/ are checked like code: links and anchors resolve, every `detkd <command> --flag` a page writes
exists in that command's --help, Python blocks compile, the blocks marked ``<!-- runnable -->`` run on generated
data, and the generated results (docs/results.md, the README's headline table) are current.

Fast: no block trains for more than one epoch of 8 images at 64 px; pages whose runnable blocks train are ``slow``.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
RUNNABLE = "<!-- runnable -->"
FENCE = re.compile(r"^(`{3,})(\w*)\s*$")
LINK = re.compile(r"!?\[(?:[^\]]|\][^(])*?\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
TRAINS = re.compile(r"\b(distill|train_baseline|distill_via_assistant)\(|detkd (distill|compare|demo)\b")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------------------------------- markdown parsing
def blocks(path: Path) -> list[dict]:
    """Fenced code blocks of a page: language, code, first line number, and whether ``<!-- runnable -->`` precedes it."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(m.group(1)))
        out.append({"lang": m.group(2), "code": "\n".join(lines[i + 1:end]) + "\n", "line": i + 1,
                    "runnable": prev == RUNNABLE})
        i = end + 1
    return out


def prose(path: Path) -> str:
    """The page without its fenced code blocks (links and headings live here)."""
    text, out, fence = path.read_text(), [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.startswith(fence):
            fence = None
        elif fence is None:
            out.append(line)
    return "\n".join(out)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lowercase, punctuation except - and _ dropped, spaces -> -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in prose(path).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        if n:
            seen[f"{slug}-{n}"] = 1
    return set(seen)


def code_texts(path: Path, python: bool = True) -> list[str]:
    """What a page writes as code: each fenced shell (and Python) block, continuation lines joined, each inline span."""
    langs = {"", "bash", "sh"} | ({"python"} if python else set())
    texts = [b["code"].replace("\\\n", " ") for b in blocks(path) if b["lang"] in langs]
    return texts + INLINE_CODE.findall(prose(path))


# --------------------------------------------------------------------------------------------------- links
@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_links_and_anchors_resolve(page):
    broken = []
    text = INLINE_CODE.sub("", prose(page))
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: {file} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {rel(dest)}")
    assert not broken, f"{rel(page)}: broken links:\n  " + "\n  ".join(broken)


def test_readme_links_every_guide():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(prose(ROOT / "README.md"))}
    missing = [rel(p) for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not missing, f"README.md does not link these guides: {missing}"


# ------------------------------------------------------------------------------------------------ CLI flags
def command_flags() -> dict[str, set[str]]:
    """Each detkd sub-command's option strings, from the parser the CLI builds (in-process)."""
    import argparse

    from detkd.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


def detkd_commands(text: str) -> list[tuple[str, list[str]]]:
    """(sub-command, flags) of every ``detkd <sub> ...`` in a piece of code, up to the end of its line or comment."""
    found = []
    for line in text.splitlines():
        for m in re.finditer(r"(?<![\w/.-])detkd\s+([a-z]+)\b([^#\n]*)", line):
            flags = [f for f in FLAG.findall(m.group(2))]
            found.append((m.group(1), flags))
    return found


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_detkd_flags_exist(page):
    known, wrong = command_flags(), []
    for text in code_texts(page, python=False):
        for command, flags in detkd_commands(text):
            if command not in known:
                wrong.append(f"detkd {command}: no such command (known: {', '.join(known)})")
                continue
            wrong += [f"detkd {command} {f}: not in `detkd {command} --help`" for f in flags
                      if f not in known[command]]
    assert not wrong, f"{rel(page)}:\n  " + "\n  ".join(wrong)


def script_flags() -> set[str]:
    """Flags of the repository's own scripts (benchmarks/, tools/), which pages mention too."""
    sources = [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("tools/*.py")]
    return {f for p in sources for f in re.findall(r"[\"'](--[a-z][a-z0-9-]*)[\"']", p.read_text())}


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_flag_mentioned_exists_somewhere(page):
    """A ``--flag`` written in code outside a ``detkd`` command line must be an option of some detkd command or of one
    of the repository's scripts (a renamed flag then fails here too)."""
    known = set().union(*command_flags().values()) | script_flags() | {"--help"}
    unknown = sorted({f for text in code_texts(page) for f in FLAG.findall(text)} - known)
    assert not unknown, f"{rel(page)} mentions flags no command or script has: {unknown}"


# ---------------------------------------------------------------------------------------------- Python blocks
@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_python_blocks_compile(page):
    for b in blocks(page):
        if b["lang"] == "python":
            compile(b["code"], f"{rel(page)}:{b['line']}", "exec")


def runnable_pages() -> list:
    params = []
    for page in PAGES:
        runnable = [b for b in blocks(page) if b["runnable"]]
        if runnable:
            slow = any(TRAINS.search(b["code"]) for b in runnable)
            params.append(pytest.param(page, id=rel(page), marks=[pytest.mark.slow] if slow else []))
    return params


def run_shell_block(code: str, where: str) -> None:
    """Each ``detkd ...`` line of a runnable shell block through the CLI, in-process; each must exit 0."""
    from detkd.cli import main

    for line in code.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        if not line:
            continue
        argv = shlex.split(line)
        assert argv[0] == "detkd", f"{where}: a runnable shell block may only hold detkd commands, not: {line}"
        assert main(argv[1:]) == 0, f"{where}: `{line}` did not exit 0"


@pytest.mark.parametrize("page", runnable_pages())
def test_runnable_blocks_run(page, tmp_path, monkeypatch):
    """A page's runnable blocks, in order, in one fresh folder (Python blocks share one namespace)."""
    import ultralytics.cfg

    monkeypatch.chdir(tmp_path)  # Ultralytics puts a relative project under its runs_dir: keep that here too
    monkeypatch.setattr(ultralytics.cfg, "SETTINGS", {**ultralytics.cfg.SETTINGS, "runs_dir": str(tmp_path / "runs")})
    namespace = {"__name__": "__docs__"}
    for b in blocks(page):
        if not b["runnable"]:
            continue
        where = f"{rel(page)}:{b['line']}"
        if b["lang"] == "python":
            exec(compile(b["code"], where, "exec"), namespace)
        elif b["lang"] in {"bash", "sh"}:
            run_shell_block(b["code"], where)
        else:
            pytest.fail(f"{where}: runnable blocks are python or bash, not {b['lang']!r}")


def test_runnable_examples_exist():
    """Each guide opens with an example (a code block before its first section); most are runnable."""
    guides = [p for p in DOCS.glob("*.md") if p.name != "results.md"]
    no_example = [rel(p) for p in guides
                  if not re.search(r"^```", prose_until_section(p), flags=re.M)]
    assert not no_example, f"guides without an example before their first section: {no_example}"
    assert len(runnable_pages()) >= len(guides) // 2


def prose_until_section(path: Path) -> str:
    text = path.read_text()
    m = re.search(r"^## ", text, flags=re.M)
    return text[: m.start()] if m else text


# ----------------------------------------------------------------------------------------- generated results
def test_generated_results_are_current():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import render_results
    finally:
        sys.path.remove(str(ROOT / "tools"))
    stale = [rel(path) for path, text in render_results.rendered().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, (f"{', '.join(stale)} differ from benchmarks/results/: regenerate with "
                       f"`{render_results.COMMAND}` and commit the result")


def test_readme_numbers_have_a_source():
    """Every measured number in the README's prose (x.xxx) also appears on a docs page or in a results file, so the
    README introduces no number that the details do not back."""
    readme = re.sub(r"<!-- results:headline -->.*?<!-- /results:headline -->", "", (ROOT / "README.md").read_text(),
                    flags=re.S)
    sources = "\n".join(p.read_text() for p in [*DOCS.glob("*.md"), *(ROOT / "benchmarks" / "results").glob("*.md")])
    orphans = sorted({n for n in re.findall(r"\d+\.\d{3}\b", readme) if n not in sources})
    assert not orphans, f"README.md numbers found in no docs page or results file: {orphans}"


def test_readme_keeps_the_ci_commands():
    """.ci/run installs exactly as the README says and runs its test command."""
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    install = "pip install -e '.[test,deploy]'"
    assert f"{install} && pytest" in readme
    assert re.search(rf"^{re.escape(install)}", ci, flags=re.M) and re.search(r"^pytest\s*$", ci, flags=re.M)
