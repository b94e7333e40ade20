"""ltcore.claims: the pre-registered claims, the fixed verdict rule, the records and files, the negative control."""
import csv
import dataclasses
import json
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import ltcore.claims as claims_module
from ltcore.claims import (CLAIMS, METHODS, MIN_RUNS, Claim, check_negative_control, evaluate_claim, verdict,
                           write_claims)
from ltcore.stats import paired_ci

# The ids issue 11 lists; they are part of the contract with the results files and the README.
ISSUE_IDS = ["IEM-overall", "IEM-few", "IEM-wo-rsa", "IEM-wo-local", "IEM-wo-global", "RSA-attention",
             "RAC-vs-base", "base-vs-balce", "RAC-vs-retrieval", "RAC-tail-lean", "RAC-k", "RAC-text",
             "control-same-loss"]
IEM_IDS = ISSUE_IDS[:6]

# The paper texts (not part of the repository; the test skips without them). Their extraction writes inline math
# three times (rendered, source, annotation), so for sentences with math the test looks for the extracted form.
PAPERS_DIR = Path(os.environ.get("LTCORE_PAPERS_DIR", "/work/shared/papers"))
PAPER_FILES = {"IEM": "iem-rsa-zhu-yang-cvpr2020.md", "RAC": "rac-long-et-al-cvpr2022.md",
               "control": "rac-long-et-al-cvpr2022.md"}
EXTRACTED_FORM = {
    "RAC-k": "Higher k\U0001d458k consistently improves performance until the cutoff induced by the text encoding "
             "truncation (767676 tokens), however it does come at the cost of (linearly) higher training time.",
    "RAC-vs-balce": "RAC consistently increases all-class top-1 accuracy by 8.04%percent8.048.04\\% on "
                    "Places365-LT and 7.72%percent7.727.72\\% on iNat over BalCE, and by 25.48%percent25.4825.48\\% "
                    "over standard cross entropy on Places365-LT.",
}


def make_claim(**changes) -> Claim:
    fields = dict(id="X-test", paper="IEM", source="Table 0", sentence="It works.", metric="overall",
                  method_a="iem", method_b="plain", direction="greater")
    fields.update(changes)
    return Claim(**fields)


def runs_of(n: int) -> list[dict]:
    return [{"seed": seed, "permutation": permutation} for permutation in range(3) for seed in range(5)][:n] \
        if n <= 15 else [{"seed": i, "permutation": 0} for i in range(n)]


def record_for(claim_id: str, n: int | None = None, shift: float = 1.0) -> dict:
    claim = CLAIMS[claim_id]
    n = n or MIN_RUNS[claim.setting]
    b = np.random.default_rng(n).normal(70.0, 2.0, size=n)
    return evaluate_claim(claim, (b + shift).tolist(), b.tolist(), runs_of(n))


# --- the registry ------------------------------------------------------------------------------------------


def test_every_issue_claim_is_registered_with_an_e2e_twin_for_iem():
    assert set(ISSUE_IDS) <= set(CLAIMS)
    for claim_id in IEM_IDS:
        frozen, e2e = CLAIMS[claim_id], CLAIMS[claim_id + "-e2e"]
        assert frozen.setting == "frozen-features" and e2e.setting == "e2e"
        assert dataclasses.replace(e2e, id=claim_id, setting="frozen-features") == frozen
    assert {claim.setting for claim in CLAIMS.values() if not claim.id.endswith("-e2e")} == {"frozen-features"}


def test_registered_directions_follow_the_issue():
    directions = {claim_id: (CLAIMS[claim_id].method_a, CLAIMS[claim_id].direction, CLAIMS[claim_id].method_b)
                  for claim_id in ISSUE_IDS}
    assert directions["IEM-overall"] == ("iem", "greater", "plain")
    assert directions["IEM-few"] == ("iem", "greater", "plain") and CLAIMS["IEM-few"].metric == "few"
    for ablation in ("rsa", "local", "global"):
        assert directions[f"IEM-wo-{ablation}"] == (f"iem-wo-{ablation}", "less", "iem")
    assert directions["RSA-attention"] == ("iem", "greater", "iem-uniform-attention")
    assert directions["RAC-vs-base"] == ("rac", "greater", "base-lace")
    assert directions["base-vs-balce"] == ("base-lace", "greater", "balce-eq2")
    assert directions["RAC-vs-retrieval"] == ("rac", "greater", "retrieval-only")
    assert directions["RAC-tail-lean"] == ("rac-retrieval-branch", "greater", "rac-base-branch")
    assert CLAIMS["RAC-tail-lean"].metric == "few_minus_many_gap"
    assert directions["RAC-k"] == ("retrieval-only-k30", "greater", "retrieval-only-k1")
    assert directions["RAC-text"] == ("rac", "equivalent", "rac-random-bow") and CLAIMS["RAC-text"].margin == 2.0
    control = CLAIMS["control-same-loss"]
    assert (control.paper, control.direction, control.margin) == ("control", "equivalent", 1.0)
    assert {control.method_a, control.method_b} == {"balce-ren", "base-lace"}
    order = CLAIMS["control-data-order"]
    assert (order.paper, order.direction, order.margin) == ("control", "equivalent", 1.0)
    assert (order.method_a, order.method_b) == ("base-lace", "base-lace-reordered")


def test_every_method_is_used_documented_and_nothing_else():
    used = {name for claim in CLAIMS.values() for name in (claim.method_a, claim.method_b)}
    assert used == set(METHODS)
    for name in METHODS:
        assert f"``{name}``" in claims_module.__doc__


def test_every_claim_writes_down_our_reading():
    assert all(claim.reading.strip() for claim in CLAIMS.values())


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        CLAIMS["new"] = make_claim()
    with pytest.raises(dataclasses.FrozenInstanceError):
        CLAIMS["IEM-overall"].direction = "less"


@pytest.mark.skipif(not PAPERS_DIR.is_dir(), reason=f"paper texts not found in {PAPERS_DIR} (LTCORE_PAPERS_DIR)")
@pytest.mark.parametrize("claim_id", sorted(CLAIMS))
def test_sentences_are_quoted_from_the_papers(claim_id):
    claim = CLAIMS[claim_id]
    if claim.source.startswith("protocol"):  # a control of the protocol itself quotes the issue, not a paper
        assert claim.paper == "control"
        return
    text = (PAPERS_DIR / PAPER_FILES[claim.paper]).read_text(encoding="utf-8")
    # Whitespace compared as single spaces: the texts hold line breaks and non-breaking spaces ("LACE\xa0[38]").
    assert " ".join(EXTRACTED_FORM.get(claim_id, claim.sentence).split()) in " ".join(text.split())


@pytest.mark.parametrize("changes, message", [
    ({"id": "has space"}, r"claim id must be letters and digits"),
    ({"id": ""}, r"claim id must be letters and digits"),
    ({"id": "a--b"}, r"claim id must be letters and digits"),
    ({"id": 3}, r"claim id must be letters and digits"),
    ({"paper": "ResNet"}, r"paper must be one of"),
    ({"setting": "finetune"}, r"setting must be one of"),
    ({"setting": "e2e"}, r"ends in '-e2e' exactly when the setting is 'e2e'"),
    ({"id": "X-e2e"}, r"ends in '-e2e' exactly when the setting is 'e2e'"),
    ({"source": " "}, r"source must be a non-empty string"),
    ({"sentence": None}, r"sentence must be a non-empty string"),
    ({"reading": None}, r"reading must be a string"),
    ({"metric": "top5"}, r"metric must be one of"),
    ({"method_a": "resnet"}, r"method_a must be one of"),
    ({"method_b": "IEM"}, r"method_b must be one of"),
    ({"method_b": "iem"}, r"method_a and method_b must differ"),
    ({"direction": "better"}, r"direction must be one of"),
    ({"direction": "equivalent"}, r"needs a margin in points"),
    ({"direction": "equivalent", "margin": 0.0}, r"margin must be a finite number > 0.0"),
    ({"direction": "equivalent", "margin": -1.0}, r"margin must be a finite number > 0.0"),
    ({"direction": "equivalent", "margin": "1"}, r"margin must be a finite number > 0.0"),
    ({"margin": 1.0}, r"a margin belongs only to 'equivalent' claims"),
    ({"direction": "less", "margin": 0.5}, r"a margin belongs only to 'equivalent' claims"),
    ({"paper": "control"}, r"a control .* its direction is 'equivalent'"),
])
def test_claim_refuses_bad_fields(changes, message):
    with pytest.raises(ValueError, match=message):
        make_claim(**changes)


@pytest.mark.hostile
@pytest.mark.parametrize("margin", [math.nan, math.inf, -math.inf])
def test_claim_refuses_a_non_finite_margin(margin):
    with pytest.raises(ValueError, match=r"margin must be a finite number"):
        make_claim(direction="equivalent", margin=margin)


# --- the verdict rule --------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction, low, high, expected", [
    ("greater", 0.1, 2.0, "reproduced"),
    ("greater", -2.0, -0.1, "contradicted"),
    ("greater", -1.0, 1.0, "inconclusive"),
    ("greater", 0.0, 1.0, "inconclusive"),  # touches 0: not entirely above it
    ("greater", -1.0, 0.0, "inconclusive"),  # touches 0: not entirely below it
    ("greater", 0.0, 0.0, "inconclusive"),
    ("greater", 0.5, 0.5, "reproduced"),  # zero width, above 0
    ("less", -2.0, -0.1, "reproduced"),
    ("less", 0.1, 2.0, "contradicted"),
    ("less", -1.0, 1.0, "inconclusive"),
    ("less", -1.0, 0.0, "inconclusive"),
    ("less", 0.0, 1.0, "inconclusive"),
])
def test_verdict_of_a_direction(direction, low, high, expected):
    claim = make_claim(direction=direction)
    assert verdict(claim, SimpleNamespace(low=low, high=high)) == expected


@pytest.mark.parametrize("low, high, expected", [
    (-0.5, 0.5, "reproduced"),
    (0.0, 0.0, "reproduced"),  # two identical methods
    (-0.99, 0.99, "reproduced"),
    (-1.0, 0.5, "inconclusive"),  # touches -margin from inside
    (-0.5, 1.0, "inconclusive"),  # touches +margin from inside
    (0.5, 1.5, "inconclusive"),  # straddles +margin
    (-3.0, 3.0, "inconclusive"),  # wider than the margin on both sides
    (1.5, 2.0, "contradicted"),
    (-2.0, -1.5, "contradicted"),
    (1.0, 2.0, "inconclusive"),  # touches +margin from outside
    (-2.0, -1.0, "inconclusive"),  # touches -margin from outside
])
def test_verdict_of_an_equivalence_with_margin_one(low, high, expected):
    claim = make_claim(direction="equivalent", margin=1.0)
    assert verdict(claim, SimpleNamespace(low=low, high=high)) == expected


def test_verdict_reads_a_paired_interval():
    ci = paired_ci([71.0, 72.5, 70.2, 73.1], [70.0, 71.0, 69.9, 71.8])
    assert ci.low > 0 and verdict(make_claim(), ci) == "reproduced"


@pytest.mark.hostile
@pytest.mark.parametrize("low, high, message", [
    (math.nan, 1.0, r"ci.low must be a finite number"),
    (0.0, math.inf, r"ci.high must be a finite number"),
    (1.0, 0.0, r"ci.low must not exceed ci.high"),
])
def test_verdict_refuses_a_broken_interval(low, high, message):
    with pytest.raises(ValueError, match=message):
        verdict(make_claim(), SimpleNamespace(low=low, high=high))


# --- records -----------------------------------------------------------------------------------------------


def test_record_holds_the_claim_the_runs_and_the_interval():
    claim = CLAIMS["IEM-overall"]
    b = np.linspace(60.0, 74.0, 15)
    a = b + np.linspace(-0.5, 2.5, 15)
    record = evaluate_claim(claim, a.tolist(), b.tolist(), runs_of(15))
    ci = paired_ci(a.tolist(), b.tolist())
    assert {key: record[key] for key in ("id", "paper", "source", "sentence", "metric", "method_a", "method_b",
                                         "direction", "margin", "setting", "reading")} == dataclasses.asdict(claim)
    assert record["diffs"] == list(ci.diffs) and record["diffs"][0] == pytest.approx(-0.5)
    assert record["runs"] == runs_of(15) and record["runs"][5] == {"seed": 0, "permutation": 1}
    assert (record["mean"], record["ci95"], record["n"]) == (ci.mean, [ci.low, ci.high], 15)
    assert record["verdict"] == verdict(claim, ci) == "reproduced"
    assert record["setting"] == "frozen-features"


def test_identical_methods_make_the_control_reproduced():
    results = np.random.default_rng(1).normal(80.0, 3.0, size=15).tolist()
    record = evaluate_claim(CLAIMS["control-same-loss"], results, results, runs_of(15))
    assert record["ci95"] == [0.0, 0.0] and record["verdict"] == "reproduced"


@pytest.mark.parametrize("runs, message", [
    (runs_of(4), r"5 paired results but 4 runs"),
    (runs_of(4) + [{"seed": 0, "permutation": 0}], r"runs must be distinct.*\[\(0, 0\)\]"),
    (runs_of(4) + [{"seed": 9}], r"runs\[4\] must be a dict with exactly the keys"),
    (runs_of(4) + [{"seed": 9, "permutation": 0, "order": 1}], r"runs\[4\] must be a dict with exactly"),
    (runs_of(4) + [(9, 0)], r"runs\[4\] must be a dict"),
    (runs_of(4) + [{"seed": -1, "permutation": 0}], r"runs\[4\]\['seed'\] must be an integer >= 0"),
    (runs_of(4) + [{"seed": 9, "permutation": True}], r"runs\[4\]\['permutation'\] must be an integer"),
    ({"seed": 0, "permutation": 0}, r"runs must be a list"),
])
def test_evaluate_claim_refuses_bad_runs(runs, message):
    with pytest.raises(ValueError, match=r"claim IEM-overall-e2e: " + message):
        evaluate_claim(CLAIMS["IEM-overall-e2e"], [1.0] * 5, [0.0] * 5, runs)


@pytest.mark.hostile
def test_evaluate_claim_refuses_a_non_finite_result_naming_claim_and_run():
    with pytest.raises(ValueError, match=r"claim IEM-few: b\[3\] must be a finite number"):
        evaluate_claim(CLAIMS["IEM-few"], [50.0] * 15, [50.0, 40.0, 45.0, math.nan] + [1.0] * 11, runs_of(15))


# --- files -------------------------------------------------------------------------------------------------


def test_write_claims_writes_standard_json_and_csv(tmp_path):
    records = [record_for("IEM-overall"), record_for("IEM-wo-rsa-e2e", shift=-1.0), record_for("RAC-text"),
               record_for("control-same-loss", shift=0.0)]
    path = write_claims(records, tmp_path)
    assert path == tmp_path / "claims.json"

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    written = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    assert list(written) == ["claims"] and written["claims"] == records
    assert written["claims"][2]["margin"] == 2.0 and written["claims"][0]["margin"] is None
    with open(tmp_path / "claims.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ["IEM-overall", "IEM-wo-rsa-e2e", "RAC-text", "control-same-loss"]
    assert [row["verdict"] for row in rows] == [record["verdict"] for record in records]
    assert float(rows[0]["ci95_low"]) == records[0]["ci95"][0] and rows[0]["margin"] == ""
    assert json.loads(rows[1]["diffs"]) == records[1]["diffs"] and rows[1]["setting"] == "e2e"
    assert json.loads(rows[1]["runs"]) == records[1]["runs"] and rows[1]["n"] == "5"
    assert sorted(os.listdir(tmp_path)) == ["claims.csv", "claims.json"]  # no temporary file left


def test_written_claims_can_be_written_again_unchanged(tmp_path):
    write_claims([record_for("RAC-k"), record_for("IEM-few-e2e")], tmp_path / "first")
    first = json.loads((tmp_path / "first" / "claims.json").read_text(encoding="utf-8"))["claims"]
    write_claims(first, tmp_path / "second")
    for name in ("claims.json", "claims.csv"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


def test_write_claims_accepts_numpy_scalars_and_writes_python_numbers(tmp_path):
    record = record_for("IEM-overall")
    record["diffs"] = [np.float64(d) for d in record["diffs"]]
    record["runs"] = [{key: np.int64(value) for key, value in run.items()} for run in record["runs"]]
    write_claims([record], tmp_path)
    written = json.loads((tmp_path / "claims.json").read_text(encoding="utf-8"))["claims"][0]
    assert written["runs"][0] == {"seed": 0, "permutation": 0} and written["diffs"] == record["diffs"]


def test_quick_profile_may_lower_the_minimum_runs_explicitly(tmp_path):
    records = [record_for("IEM-overall", n=3), record_for("IEM-overall-e2e", n=2)]
    with pytest.raises(ValueError, match=r"IEM-overall ran 3 paired runs, fewer than the 15"):
        write_claims(records, tmp_path)
    write_claims(records, tmp_path, min_runs={"frozen-features": 3, "e2e": 2})
    assert len(json.loads((tmp_path / "claims.json").read_text())["claims"]) == 2
    with pytest.raises(ValueError, match=r"min_runs\['e2e'\] must be an integer >= 2"):
        write_claims(records, tmp_path, min_runs={"frozen-features": 3, "e2e": 1})


def _tamper(key, value):
    def change(record):
        record[key] = value
        return record
    return change


@pytest.mark.hostile
@pytest.mark.parametrize("change, message", [
    (_tamper("verdict", "contradicted"), r"\['verdict'\] do not follow from its claim"),
    (_tamper("ci95", [0.0, 5.0]), r"\['ci95'\] do not follow"),
    (_tamper("mean", 3.0), r"\['mean'\] do not follow"),
    (_tamper("n", 16), r"\['n'\] do not follow"),
    (lambda record: {**record, "diffs": record["diffs"][:-1] + [math.nan]},
     r"records\[0\] \(IEM-overall\): diffs\[14\] must be a finite number"),
    (_tamper("direction", "less"), r"\['direction'\] differ from the pre-registered claim IEM-overall"),
    (_tamper("sentence", "IEM wins."), r"\['sentence'\] differ from the pre-registered claim"),
    (lambda record: {**record, "a_mean": 80.0}, r"unknown keys \['a_mean'\]"),
    (lambda record: {key: value for key, value in record.items() if key != "runs"}, r"missing keys \['runs'\]"),
    (lambda record: record["diffs"], r"records\[0\] must be a dict"),
    (lambda record: {**record, "diffs": "0.5"}, r"diffs must be a list of numbers"),
])
def test_write_claims_refuses_a_tampered_record_and_writes_nothing(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        write_claims([change(record_for("IEM-overall"))], tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("records, message", [
    ([record_for("IEM-overall"), record_for("IEM-overall", shift=2.0)], r"IEM-overall appears more than once"),
    ([record_for("IEM-overall", n=14)], r"IEM-overall ran 14 paired runs, fewer than the 15 .*'frozen-features'"),
    ([record_for("IEM-few-e2e", n=4)], r"IEM-few-e2e ran 4 paired runs, fewer than the 5 .*'e2e'"),
])
def test_write_claims_refuses_duplicates_and_too_few_runs(tmp_path, records, message):
    with pytest.raises(ValueError, match=message):
        write_claims(records, tmp_path)
    assert os.listdir(tmp_path) == []


# --- the negative control ----------------------------------------------------------------------------------


def test_negative_control_passes_when_reproduced():
    records = [record_for("IEM-overall"), record_for("control-same-loss", shift=0.0)]
    check = check_negative_control(records)
    assert check.passed
    assert "Negative control passed" in check.message and "control-same-loss" in check.message


@pytest.mark.parametrize("records, says", [
    ([record_for("control-same-loss", shift=3.0)], r"control-same-loss: balce-ren vs base-lace.*contradicted"),
    ([record_for("IEM-overall")], r"no negative control"),
    ([], r"no negative control"),
])
def test_negative_control_says_loudly_that_the_protocol_is_broken(records, says):
    check = check_negative_control(records)
    assert not check.passed
    assert check.message.startswith("THE PROTOCOL IS BROKEN")
    assert re.search(says, check.message)


def test_negative_control_fails_when_inconclusive():
    noisy = np.random.default_rng(3).normal(0.0, 4.0, size=15)
    record = evaluate_claim(CLAIMS["control-same-loss"], (70 + noisy).tolist(), [70.0] * 15, runs_of(15))
    assert record["verdict"] == "inconclusive"
    check = check_negative_control([record])
    assert not check.passed and "inconclusive" in check.message


def _result_rows(method, setting, overall, few=None, many=None, runs=((0, 0), (1, 0), (0, 1))):
    return [{"method": method, "setting": setting, "seed": seed, "permutation": perm,
             "overall": overall(seed, perm), "few": few if few is not None else 10.0,
             "many": many if many is not None else 50.0}
            for seed, perm in runs]


def test_claim_records_pair_methods_by_run_and_compute_each_metric():
    rows = (_result_rows("rac", "frozen-features", lambda s, p: 60.0 + s + p)
            + _result_rows("base-lace", "frozen-features", lambda s, p: 57.0 + s + p + 0.1 * s)
            + _result_rows("rac-retrieval-branch", "frozen-features", lambda s, p: 0.0, few=40.0, many=45.0)
            + _result_rows("rac-base-branch", "frozen-features", lambda s, p: 0.0, few=20.0, many=70.0))
    records, skipped = claims_module.claim_records(rows, [CLAIMS["RAC-vs-base"], CLAIMS["RAC-tail-lean"],
                                                   CLAIMS["IEM-overall"]])
    by_id = {record["id"]: record for record in records}
    assert by_id["RAC-vs-base"]["runs"] == [{"seed": 0, "permutation": 0}, {"seed": 0, "permutation": 1},
                                            {"seed": 1, "permutation": 0}]
    assert by_id["RAC-vs-base"]["diffs"] == pytest.approx([3.0, 3.0, 2.9])
    assert by_id["RAC-tail-lean"]["diffs"] == pytest.approx([45.0] * 3)   # (40 - 45) - (20 - 70)
    assert by_id["RAC-tail-lean"]["verdict"] == "reproduced"
    assert "IEM-overall" in skipped and "0 paired run(s)" in skipped["IEM-overall"]


def test_claim_records_skip_a_metric_that_is_not_a_number_and_refuse_a_repeated_row():
    rows = (_result_rows("rac-retrieval-branch", "frozen-features", lambda s, p: 0.0, few=40.0, many=math.nan)
            + _result_rows("rac-base-branch", "frozen-features", lambda s, p: 0.0, few=20.0, many=70.0))
    records, skipped = claims_module.claim_records(rows, [CLAIMS["RAC-tail-lean"]])
    assert records == [] and "empty shot group" in skipped["RAC-tail-lean"]
    with pytest.raises(ValueError, match="a second result"):
        claims_module.claim_records(rows + rows[:1])


# --- reading the claims back, sentences and the table -------------------------------------------------------


def test_read_claims_returns_what_write_claims_wrote(tmp_path):
    records = [record_for("IEM-overall"), record_for("RAC-text"), record_for("control-same-loss", shift=0.0)]
    write_claims(records, tmp_path)
    assert claims_module.read_claims(tmp_path) == records


@pytest.mark.parametrize("content, message", [
    (None, r"no claims file .*claims\.json"),
    ('[{"id": "IEM-overall"}]', r'must hold an object \{"claims": \[\.\.\.\]\}'),
    ('{"claims": [{"id": "IEM-overall", "mean": NaN}]}', r"claims file .*claims\.json is not valid JSON: NaN is not standard JSON"),
    ('{"claims": [], "extra": 1}', r'must hold an object'),
])
def test_read_claims_refuses_a_missing_or_malformed_file(tmp_path, content, message):
    if content is not None:
        (tmp_path / "claims.json").write_text(content, encoding="utf-8")
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        claims_module.read_claims(tmp_path)


def test_read_claims_refuses_an_edited_verdict_and_too_few_runs(tmp_path):
    record = record_for("IEM-overall", shift=5.0)
    assert record["verdict"] == "reproduced"
    (tmp_path / "claims.json").write_text(json.dumps({"claims": [{**record, "verdict": "contradicted"}]}))
    with pytest.raises(ValueError, match=r"claims\.json: records\[0\] \(IEM-overall\): \['verdict'\] do not follow"):
        claims_module.read_claims(tmp_path)
    write_claims([record_for("IEM-overall", n=4, shift=5.0)], tmp_path, {"frozen-features": 4, "e2e": 2})
    with pytest.raises(ValueError, match=r"IEM-overall ran 4 paired runs, fewer than the 15"):
        claims_module.read_claims(tmp_path)
    assert len(claims_module.read_claims(tmp_path, {"frozen-features": 4, "e2e": 2})) == 1


def test_verdict_sentence_says_the_interval_and_which_way_it_fell():
    up, down, flat = record_for("IEM-overall", shift=5.0), record_for("IEM-overall", shift=-5.0), \
        record_for("RAC-text", shift=0.0)
    assert up["verdict"] == "reproduced" and down["verdict"] == "contradicted"
    assert claims_module.verdict_sentence(up).startswith("iem > plain on overall: A - B = +5.00 points, 95% CI [")
    assert claims_module.verdict_sentence(up).endswith("over 15 runs: reproduced.")
    assert "contradicted, the interval lies entirely on the other side" in claims_module.verdict_sentence(down)
    text = claims_module.verdict_sentence(flat)
    assert text.startswith("rac ≈ rac-random-bow (within ±2) on overall")
    wide = evaluate_claim(CLAIMS["RAC-text"], [d * 10 for d in np.random.default_rng(1).normal(0, 3, 15)],
                          [0.0] * 15, runs_of(15))
    assert wide["verdict"] == "inconclusive"
    assert claims_module.verdict_sentence(wide).endswith("inconclusive, the interval includes a margin's edge.")


def test_claims_table_has_one_row_per_record_with_its_sentence():
    records = [record_for("IEM-overall"), record_for("IEM-few-e2e")]
    rows = claims_module.claims_table(records)
    assert [row["claim"] for row in rows] == ["IEM-overall", "IEM-few-e2e"]
    assert rows[1]["setting"] == "e2e" and rows[0]["verdict"] == f"**{records[0]['verdict']}**"
    assert rows[0]["finding"] == claims_module.verdict_sentence(records[0])


def test_quote_claims_lists_each_verdict_with_its_e2e_twin_read_from_the_file(tmp_path):
    records = [record_for("IEM-overall", shift=5.0), record_for("IEM-overall-e2e", shift=-5.0),
               record_for("RAC-k", shift=3.0)]
    write_claims(records, tmp_path)
    lines = claims_module.quote_claims(["RAC-k", "IEM-overall"], tmp_path).split("\n")
    assert [line.split("**")[1] for line in lines] == ["RAC-k", "IEM-overall", "IEM-overall-e2e"]
    assert lines[0].startswith("* **RAC-k** (frozen-features, ")
    assert lines[0].endswith(claims_module.verdict_sentence(records[2]))
    assert lines[2].endswith("contradicted, the interval lies entirely on the other side of the paper's claim.")
    # asking for the twin too quotes it once, where it was asked
    twice = claims_module.quote_claims(["IEM-overall-e2e", "IEM-overall"], tmp_path).split("\n")
    assert [line.split("**")[1] for line in twice] == ["IEM-overall-e2e", "IEM-overall"]


def test_quote_claims_refuses_an_unknown_id_or_a_claim_without_a_record(tmp_path):
    write_claims([record_for("RAC-k")], tmp_path)
    with pytest.raises(ValueError, match="claim id must be one of"):
        claims_module.quote_claims(["RAC-nope"], tmp_path)
    with pytest.raises(KeyError, match=r"claims.json has no record for 'IEM-few'"):
        claims_module.quote_claims(["IEM-few"], tmp_path)
    with pytest.raises(FileNotFoundError, match="claims"):
        claims_module.quote_claims(["RAC-k"], tmp_path / "missing")


def test_quote_claims_reads_the_committed_record_by_default():
    text = claims_module.quote_claims(["control-same-loss"])
    assert text.startswith("* **control-same-loss** (frozen-features, ") and text.endswith("reproduced.")
