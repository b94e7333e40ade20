"""Keep the README's results tables equal to the committed ``results/*.json``.

A block ``<!-- results:NAME -->`` ... ``<!-- /results -->`` in README.md is replaced by the
markdown table of ``results/NAME.json``; ``<!-- results:claims -->`` is the claims table of
``results/claims.json`` (:func:`ltcore.claims.claims_table`). A block ``<!-- verdicts:ID ID ... -->`` ...
``<!-- /verdicts -->`` is the verdict sentences of those claims (:func:`ltcore.claims.quote_claims`): the figures'
captions say with it whether what a figure shows holds over the paired runs, without a typed number.
``python -m ltcore readme`` rewrites the blocks (``make notebooks`` does it after regenerating the results); a test
checks they agree.
"""
from __future__ import annotations

import re
from pathlib import Path

from ltcore.claims import claims_table, quote_claims, read_claims
from ltcore.io import atomic_write
from ltcore.paths import REPO_ROOT
from ltcore.results import load_results, markdown_table

BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+)(?P<cols>(?: [\w-]+)*) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
VERDICTS = re.compile(r"(<!-- verdicts:(?P<ids>[\w-]+(?: [\w-]+)*) -->\n)(?P<body>.*?)(<!-- /verdicts -->)", re.S)


def render(text: str, results_folder: Path) -> str:
    def table(match: re.Match) -> str:
        if match["name"] == "claims":
            rows = claims_table(read_claims(results_folder))
        else:
            rows = load_results(match["name"], results_folder)
        columns = match["cols"].split() or None
        return f"{match.group(1)}{markdown_table(rows, columns)}\n{match.group(5)}"

    def verdicts(match: re.Match) -> str:
        return f"{match.group(1)}{quote_claims(match['ids'].split(), results_folder)}\n{match.group(4)}"

    return VERDICTS.sub(verdicts, BLOCK.sub(table, text))


def update_readme(readme: Path = REPO_ROOT / "README.md", results_folder: Path = REPO_ROOT / "results") -> bool:
    """Rewrite the results blocks; returns whether anything changed."""
    text = readme.read_text()
    new = render(text, results_folder)
    if new != text:
        atomic_write(readme, lambda tmp: Path(tmp).write_text(new))
    return new != text
