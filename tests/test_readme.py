"""The README's results tables are the committed results files, not hand-edited numbers."""
from ltcore.paths import REPO_ROOT
from ltcore.readme import BLOCK, render
from ltcore.results import save_results


def test_readme_tables_match_committed_results():
    text = (REPO_ROOT / "README.md").read_text()
    assert BLOCK.search(text), "README has no results block"
    assert render(text, REPO_ROOT / "results") == text, "run `python -m ltcore readme` after `make notebooks`"


def test_render_replaces_a_block(tmp_path, monkeypatch):
    monkeypatch.setenv("LTCORE_OUTPUT_DIR", str(tmp_path))
    save_results([{"dataset": "d", "method": "m", "many": 1.0, "medium": None, "few": 3.0, "overall": 2.0,
                   "seconds": 4.0}], "toy")
    text = "a\n<!-- results:toy method overall -->\nold\n<!-- /results -->\nb\n"
    assert render(text, tmp_path / "results") == \
        "a\n<!-- results:toy method overall -->\n| method | overall |\n|---|---|\n| m | 2.0 |\n<!-- /results -->\nb\n"


def test_render_writes_the_claims_table_from_claims_json(tmp_path):
    from ltcore.claims import CLAIMS, evaluate_claim, write_claims

    runs = [{"seed": seed, "permutation": p} for p in range(3) for seed in range(5)]
    record = evaluate_claim(CLAIMS["RAC-k"], [float(v) for v in range(60, 75)], [50.0] * 15, runs)
    write_claims([record], tmp_path)
    text = render("<!-- results:claims claim verdict -->\n<!-- /results -->\n", tmp_path)
    assert text == ("<!-- results:claims claim verdict -->\n| claim | verdict |\n|---|---|\n"
                    "| RAC-k | **reproduced** |\n<!-- /results -->\n")


def test_render_writes_a_captions_verdicts_from_claims_json(tmp_path):
    from ltcore.claims import CLAIMS, evaluate_claim, write_claims

    runs = [{"seed": seed, "permutation": p} for p in range(3) for seed in range(5)]
    write_claims([evaluate_claim(CLAIMS["RAC-k"], [float(v) for v in range(60, 75)], [50.0] * 15, runs)], tmp_path)
    text = render("caption\n<!-- verdicts:RAC-k -->\nstale sentence\n<!-- /verdicts -->\n", tmp_path)
    body = text.split("-->\n", 1)[1].split("<!-- /verdicts")[0]
    assert body.startswith("* **RAC-k**") and "reproduced" in body and "stale" not in body
