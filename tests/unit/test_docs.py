"""The README and the docs/ pages name only things that exist (issue 33: a front door and rooms).

Pages go stale without a sound when a file moves or a variable is renamed; these checks make that a failing
test. In README.md and every docs/*.md:

1. links: every relative link `[text](path)` or `[text](path#anchor)` names a file or folder of the repository,
   and an anchor names a heading of its target page (GitHub's slug: lowercase, punctuation other than '-' and
   '_' dropped, each space a '-'); web links (`scheme://...`) are not followed;
2. paths: every inline code span that starts with examples/, tools/, conf/, docs/, megatron_sft/ or tests/
   exists, read up to its first space (what follows is arguments); a span with a glob or placeholder in it
   ('*', '<', '{', '$', '...', or a part in capitals only such as N or MODEL) is skipped;
3. variables: every script variable named in inline code, as `NAME=...` (each NAME of the span) or as a bare
   span of capitals and underscores, occurs in the source the scripts read their variables from
   (megatron_sft/launch/*.py, conf/**/*.sh, examples/**/*.sh and *.sbatch, Dockerfile) or is one of STANDARD.
   Bare names with digits are not variables here: they are modelopt's config and format names (FP8_DEFAULT_CFG);
4. the README is a front door: at most 200 lines, linking every docs page; each page starts with its title and
   a line saying who it is for;
5. the README's code map (the fenced block that starts `megatron_sft/`) lists files and folders that exist.

Checks 1-3 skip fenced code blocks: their shell lines hold $VARIABLES and example paths of the user's own.
test_the_checks_fail_on_a_broken_page shows each check reporting what it exists to catch.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 200
PATH_PREFIXES = ("examples/", "tools/", "conf/", "docs/", "megatron_sft/", "tests/")
PLACEHOLDER = re.compile(r"[*<{$]|\.\.\.|(^|/)[A-Z_]+(/|\.|$)")
# Variables the scripts pass on or the docs name for torch and its libraries, not read by the launcher itself.
STANDARD = {"CUDA_VISIBLE_DEVICES", "HF_HOME", "PATH", "OMP_NUM_THREADS",
            "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
            "MEGATRON_SFT_OFFICIAL_TEMPLATES"}  # the last: read by tests/unit/test_official_templates.py


def prose(text: str) -> str:
    """The page without its fenced code blocks (each line kept, emptied, so line numbers stay right)."""
    return re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)


def code_spans(text: str) -> list[str]:
    """Inline code outside fenced blocks; a span may run over a line break, as in Markdown."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose(text))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", prose(page.read_text()), flags=re.M)}


def check_links(page: Path) -> list[str]:
    """Relative links whose file, or whose anchor in that file, does not exist."""
    text = re.sub(r"`[^`]*`", "", prose(page.read_text()))  # code like [...](x) is not a link
    problems = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            problems.append(f"{page.name}: link {target}: no such file {path}")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            problems.append(f"{page.name}: link {target}: no heading #{anchor} in {path.name}")
    return problems


def check_paths(page: Path, root: Path = REPO) -> list[str]:
    """Repository paths named in inline code that do not exist under `root`."""
    problems = []
    for span in code_spans(page.read_text()):
        path = span.split(" ")[0]
        if path.startswith(PATH_PREFIXES) and not PLACEHOLDER.search(path) and not (root / path).exists():
            problems.append(f"{page.name}: `{span}`: no such path {path}")
    return problems


def variable_source(root: Path = REPO) -> str:
    """The text the scripts' variables are read in: the launcher, the model confs, the scripts, the Dockerfile."""
    files = [*(root / "megatron_sft" / "launch").glob("*.py"), *(root / "conf").rglob("*.sh"),
             *(root / "examples").rglob("*.sh"), *(root / "examples").rglob("*.sbatch"), root / "Dockerfile"]
    return "\n".join(f.read_text() for f in files if f.is_file())


def variables_named(span: str) -> list[str]:
    """The variables a code span names: each NAME of `NAME=value ...`, or the span itself when it is a bare NAME."""
    if re.match(r"[A-Z][A-Z0-9_]*=", span):
        return re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", span)
    return [span] if re.fullmatch(r"[A-Z][A-Z_]+", span) else []


def check_variables(page: Path, source: str) -> list[str]:
    """Variables named in inline code that no script reads and that are not in STANDARD."""
    problems = []
    for span in code_spans(page.read_text()):
        for name in variables_named(span):
            if name not in STANDARD and not re.search(rf"\b{name}\b", source):
                problems.append(f"{page.name}: `{span}`: {name} is read by no script (megatron_sft/launch, "
                                f"conf, examples, Dockerfile)")
    return problems


def check_front_door(readme: Path, pages: list[Path]) -> list[str]:
    """The README's length and its links to every page; each page's title and its who-it-is-for line."""
    lines = readme.read_text().splitlines()
    problems = []
    if len(lines) > README_MAX_LINES:
        problems.append(f"{readme.name}: {len(lines)} lines, more than {README_MAX_LINES}")
    linked = {(readme.parent / t.split("#")[0]).resolve() for t in re.findall(r"\]\(([^)\s]+)\)", "\n".join(lines))}
    for page in pages:
        head = page.read_text().splitlines()[:3] + ["", "", ""]
        if page.resolve() not in linked:
            problems.append(f"{readme.name}: no link to {page.name}")
        if not head[0].startswith("# ") or not head[2].startswith("For "):
            problems.append(f"{page.name}: does not start with '# title', a blank line and 'For <readers> ...'")
    return problems


def check_code_map(readme: Path, root: Path = REPO) -> list[str]:
    """Names at the start of the code map's lines ("  name.py   what it is") that do not exist."""
    block = re.search(r"^```\n(megatron_sft/\n.*?)^```", readme.read_text(), flags=re.S | re.M)
    if block is None:
        return [f"{readme.name}: no code map (a fenced block that starts with megatron_sft/)"]
    problems = []
    for line in block.group(1).splitlines()[1:]:
        entry = re.match(r"(  )?(\S+)  ", line)  # indented: inside megatron_sft/; continuation lines never match
        path = entry and ("megatron_sft/" if entry.group(1) else "") + entry.group(2)
        if path and not (root / path).exists():
            problems.append(f"{readme.name}: code map: no such path {path}")
    return problems


@pytest.fixture(scope="module")
def source() -> str:
    return variable_source()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    assert check_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_paths_exist(page):
    assert check_paths(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_variables_are_read_by_a_script(page, source):
    assert check_variables(page, source) == []


def test_readme_is_a_front_door_to_every_page():
    assert check_front_door(REPO / "README.md", PAGES[1:]) == []


def test_code_map_names_what_exists():
    assert check_code_map(REPO / "README.md") == []


BROKEN = """# A broken page

For the test that shows each check failing.

## Real heading

[fine](#real-heading) [missing file](no_such_page.md) [missing anchor](#no-such-heading)
`tools/convert.py` and `tools/no_such_tool.py --flag`, `conf/<org>/<model>.sh`
`TP` `MLM_WORK_DIR=/tmp` `NO_SUCH_VARIABLE=1 examples/finetune.sh` `ALSO_NOT_READ` `FP8_DEFAULT_CFG`

```bash
NOT_CHECKED_IN_A_FENCE=1 tools/not_checked_either.py
```
"""


def test_the_checks_fail_on_a_broken_page(tmp_path, source):
    page = tmp_path / "broken.md"
    page.write_text(BROKEN)
    links = check_links(page)
    assert len(links) == 2 and "no_such_page.md" in links[0] and "#no-such-heading" in links[1], links
    paths = check_paths(page)
    assert len(paths) == 1 and "tools/no_such_tool.py" in paths[0], paths
    variables = check_variables(page, source)
    assert len(variables) == 2 and "NO_SUCH_VARIABLE" in variables[0] and "ALSO_NOT_READ" in variables[1], variables
    readme = tmp_path / "README.md"
    readme.write_text("# x\n" * (README_MAX_LINES + 1))
    untitled = tmp_path / "untitled.md"
    untitled.write_text("no title\n")
    door = check_front_door(readme, [page, untitled])
    assert door[0].startswith("README.md: 201 lines") and len(door) == 4, door  # + two missing links, no title
    readme.write_text("```\nmegatron_sft/\n  config.py     kept\n  gone.py       moved\n"
                      "                the line goes on\nno_such_dir/    top level\n```\n")
    assert check_code_map(readme) == ["README.md: code map: no such path megatron_sft/gone.py",
                                      "README.md: code map: no such path no_such_dir/"]


def layout_block(names_doc: str) -> str:
    """The checkpoint layout drawn in checkpointing/names.py's docstring, unindented."""
    start, end = names_doc.index("    ROOT/"), names_doc.index("A save is written")
    return "\n".join(line[4:] for line in names_doc[start:end].rstrip("\n").splitlines())


def test_the_checkpoint_layout_page_shows_the_names_module():
    """docs/checkpoints.md draws the layout names.py's docstring draws, line for line; every constant there is
    drawn in it (a new name cannot go undocumented)."""
    from megatron_sft.checkpointing import names

    block = layout_block(names.__doc__)
    assert block in (REPO / "docs" / "checkpoints.md").read_text()
    constants = [k for k, v in vars(names).items() if k.isupper() and isinstance(v, (str, tuple))]
    assert constants and [k for k in constants if k not in block] == []
