"""The README's two commands are the ones CI and the quickstart test run, so they cannot drift apart.

The README also stays a short page for users (the rest lives in docs/), and every link in it and in
docs/*.md that points into the repository resolves, to a file and to a heading.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command(readme):
    _, test_command = readme
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#") and not line.startswith("set ")
                and not line.startswith("cd ")]
    assert commands == [test_command], commands


def test_the_quickstart_test_runs_the_readme_main_command(readme):
    main_command, _ = readme
    install, _, run = main_command.rpartition("&&")
    assert run.strip() == "pagerl run recipes/quickstart.yaml", main_command
    assert install.strip().startswith("pip install torch==2.13.0 && pip install -e ."), install
    # The quickstart test takes its command from the README (the main_command fixture) and runs it
    # unchanged, in a shell, from a fresh copy of the repository (fresh_repo, typed).
    tree = ast.parse((REPO / "tests" / "test_quickstart.py").read_text())
    tests = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    assert tests and all({"main_command", "fresh_repo", "typed"} <= {a.arg for a in t.args.args} for t in tests)
    source = (REPO / "tests" / "test_quickstart.py").read_text()
    assert "output_dir=" not in source  # no override added to what the user types


def test_both_commands_install_torch_pinned_first(readme):
    for command in readme:
        assert command.startswith("pip install torch==2.13.0 && "), command


def test_the_readme_has_at_most_200_lines():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the rest belongs in docs/"


FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", flags=re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: its text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = github_slug(heading.group(1))
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links(path: Path):
    """(target, anchor) of every link in a Markdown file that points inside the repository."""
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", path.read_text()))
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
            continue  # http:, https:, mailto: ...
        file_part, _, anchor = target.partition("#")
        yield file_part, anchor


def markdown_files():
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_github_slugs():
    assert github_slug("A second environment: `obp_slate`") == "a-second-environment-obp_slate"
    assert github_slug("Where a run's output goes") == "where-a-runs-output-goes"
    assert github_slug("Overlap, checkpoints and faults") == "overlap-checkpoints-and-faults"
    assert github_slug("A pretrained LM: SmolLM2-135M-Instruct") == "a-pretrained-lm-smollm2-135m-instruct"


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    checked = 0
    for source in markdown_files():
        for file_part, anchor in relative_links(source):
            checked += 1
            target = (source.parent / file_part).resolve() if file_part else source
            where = f"{source.relative_to(REPO)}: ({file_part}{'#' + anchor if anchor else ''})"
            if REPO not in target.parents and target != REPO:
                broken.append(f"{where} points outside the repository")
            elif not target.exists():
                broken.append(f"{where}: no such file")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{where}: no heading with that anchor in {target.relative_to(REPO)}")
    assert checked > 0
    assert not broken, "\n".join(broken)
