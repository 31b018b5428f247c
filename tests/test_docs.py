"""The docs stay true to the code: every link lands on a file that exists and, where it names a
line, on the line that holds what the link says; nothing points outside the repository."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                         if f.endswith(".md")]
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
OUTSIDE = ".." + "/shared"  # the hand-off folder beside a developer's checkout; a user's clone has none
SKIPPED_DIRS = {".git", ".venv", "cache", "runs", "__pycache__", ".pytest_cache", ".hypothesis"}


def links(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read()
    for label, target in LINK.findall(text):
        if not target.startswith(("http://", "https://", "mailto:", "#")):
            yield label, target


@pytest.mark.parametrize("page", PAGES)
def test_every_link_lands_where_it_says(page):
    checked = 0
    for label, target in links(page):
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path))
        assert full.startswith(ROOT + os.sep), f"{page}: link {target!r} leaves the repository"
        assert os.path.exists(full), f"{page}: link {target!r} points to a missing file"
        line_no = re.fullmatch(r"L(\d+)(?:-L\d+)?", anchor)
        if not line_no:
            continue
        with open(full, encoding="utf-8") as f:
            lines = f.read().split("\n")
        n = int(line_no.group(1))
        assert n <= len(lines), f"{page}: {target!r} is past the end of {path}"
        # what the link names: an equation tag '(1.3)' or a code name in backticks
        wanted = re.findall(r"\(\d+\.\d+\)", label) or re.findall(r"`([^`(]+)", label) or [label]
        for w in wanted:
            assert w in lines[n - 1], f"{page}: [{label}]({target}) lands on line {n}: {lines[n - 1].strip()!r}"
        checked += 1
    assert page == "README.md" or checked, f"{page} links no line of code"


def test_nothing_points_outside_the_repository():
    offenders = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in files:
            if name.endswith((".py", ".md", ".sh", ".txt", ".json", ".html")) or name == "run":
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    if OUTSIDE in f.read():
                        offenders.append(os.path.relpath(path, ROOT))
    assert not offenders, f"files that point outside the repository: {offenders}"


def prose(page):
    """(line number, paragraph) pairs of a page's prose: fenced code, inline code and link targets
    removed (a link keeps its label), so what is left is what a reader sees as text."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), f.read(), flags=re.S)
    start = 1
    for block in re.split(r"(\n\s*\n)", text):
        if block.strip():
            yield start, LINK.sub(r"\1", re.sub(r"`[^`]*`", "code", block))
        start += block.count("\n")


INTERVAL = re.compile(r"[\[(][^()\[\]\n]*,[^()\[\]\n]*[\])]")  # [0, 1), (0, 1]: a half-open interval is not a typo


@pytest.mark.parametrize("page", PAGES)
def test_parentheses_and_brackets_balance(page):
    """A '(' opened and never closed, or a ')' left over after a link (rendered '(1.1))'), is a
    typo a reader sees; checked per paragraph (or table row), once intervals are set aside."""
    for line, block in prose(page):
        for row in (block.split("\n") if block.lstrip().startswith("|") else [block]):
            text = row
            while INTERVAL.search(text):
                text = INTERVAL.sub("", text)
            depth = {"(": 0, "[": 0}
            for ch in text:
                if ch in "([":
                    depth[ch] += 1
                elif ch in ")]":
                    depth["(" if ch == ")" else "["] -= 1
                    assert min(depth.values()) >= 0, f"{page}:{line}: a stray '{ch}' in {row.strip()[:160]!r}"
            assert depth == {"(": 0, "[": 0}, f"{page}:{line}: an unclosed bracket in {row.strip()[:160]!r}"


def test_the_times_compare_prints_for_its_presets_are_the_measured_ones():
    """compare.py's usage prints each committed preset's time ('~85 min'): it must match the
    wall_minutes its summary.json measured, within 20% (a '~1.5 h' stood beside 85 measured)."""
    import json
    with open(os.path.join(ROOT, "compare.py"), encoding="utf-8") as f:
        usage = f.read().split('"""')[1]
    for flag, folder in (("", "results"), ("--full", os.path.join("results", "full"))):
        line = next(l for l in usage.splitlines() if re.fullmatch(rf"\s+python compare.py {re.escape(flag)}\s*#.*", l))
        printed = float(re.search(r"~(\d+) min", line).group(1))
        with open(os.path.join(ROOT, folder, "summary.json"), encoding="utf-8") as f:
            measured = json.load(f)["wall_minutes"]
        assert abs(printed - measured) <= 0.2 * measured, f"{line.strip()!r}: {measured:.0f} min measured"
