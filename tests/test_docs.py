"""Every "Taught in notebook NN, *Section*" reference in ltcore/ points at a notebook that exists and has a markdown
heading containing that section (case and spacing aside), so a reader who follows it lands somewhere."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"

# "Taught in notebook 06, *IEM results*, and notebook 07, *Table 3* (Fig. 2)." / "Taught in notebooks 01 (...), 02."
# The sentence ends at a period before a capital letter, a blank line or the end of the docstring ("Fig. 2" does not).
SENTENCE = re.compile(r"Taught in (notebooks? .*?)(?:\.\s+(?=[A-Z])|\.?\s*\n\s*\n|\.?\s*\"\"\"|\.?\s*$)", re.S)
NOTEBOOK_AND_SECTION = re.compile(r"\b(\d{2})\b(?:,\s*\*([^*]+)\*)?")


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def references_in(source: str) -> list[tuple[int, str, str | None]]:
    """(line, notebook number, section or None) of every reference in one source text."""
    found = []
    for sentence in SENTENCE.finditer(source):
        text = " ".join(line.strip().lstrip("#").strip() for line in sentence.group(1).splitlines())
        # drop asides such as "(Table 3, Fig. 3-4)" outside the *section* names, which may hold parentheses
        text = re.sub(r"\*[^*]+\*|\([^)]*\)", lambda m: m.group(0) if m.group(0).startswith("*") else "", text)
        line = source.count("\n", 0, sentence.start()) + 1
        found += [(line, number, section or None) for number, section in NOTEBOOK_AND_SECTION.findall(text)]
    return found


def references() -> list[tuple[str, str, str | None]]:
    """(file:line, notebook number, section or None) for every reference in the package's sources."""
    return [(f"{path.relative_to(REPO)}:{line}", number, section)
            for path in sorted((REPO / "ltcore").rglob("*.py"))
            for line, number, section in references_in(path.read_text())]


def headings(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return [line.lstrip("#").strip() for cell in cells if cell["cell_type"] == "markdown"
            for line in "".join(cell["source"]).splitlines() if line.startswith("#")]


REFERENCES = references()


def test_the_reference_formats_are_read():
    source = '''"""Module.

    Taught in notebook 05, *Which branch learns the tail* (Fig. 2), and notebook 07, *Table 3 (RAC)* (Table 3,
    Fig. 3-4). More text on eq. 14.
    """
    # Taught in notebooks 01 (distributions), 02 and 06.
    """Taught in notebook 03, *Region partition*"""
    '''
    assert references_in(source) == [(3, "05", "Which branch learns the tail"), (3, "07", "Table 3 (RAC)"),
                                     (6, "01", None), (6, "02", None), (6, "06", None), (7, "03", "Region partition")]


def test_the_package_has_references_to_check():
    assert len(REFERENCES) > 10
    assert {number for _, number, _ in REFERENCES} >= {"01", "02", "03", "06"}


@pytest.mark.parametrize("place, number, section", REFERENCES, ids=[f"{p} {n} {s}" for p, n, s in REFERENCES])
def test_reference_points_at_a_notebook_section(place, number, section):
    matches = sorted(NOTEBOOKS.glob(f"{number}_*.ipynb"))
    assert len(matches) == 1, f"{place}: no notebook notebooks/{number}_*.ipynb"
    if section is not None:
        titles = headings(matches[0])
        assert any(normalise(section) in normalise(title) for title in titles), \
            f"{place}: {matches[0].name} has no heading containing {section!r}; its headings: {titles}"
