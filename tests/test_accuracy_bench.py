"""bench/accuracy.py --quick runs every system end to end on a tiny emotion subset (accuracy itself is a
benchmark, see docs/accuracy.md, not a test)."""
import pytest
from conftest import ROOT, run_script, shared

pytestmark = pytest.mark.slow  # runs the real scripts


def test_accuracy_report_quick(tmp_path):
    shared("emotion")
    results = ROOT / "docs" / "accuracy.json"
    kept = results.read_bytes() if results.exists() else None
    out = tmp_path / "accuracy.md"
    # the two baselines and one trainer (the hf trainer and the variants are one line each in the bench, and
    # 25 s more of the suite's 8 minutes)
    run_script("bench/accuracy.py", "--quick", "--systems", "tfidf", "frozen", "native", "--out", out, timeout=900)

    main_table = out.read_text().partition("Other settings:")[0]
    lines = main_table.splitlines()
    header = next(line for line in lines if line.startswith("| dataset"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
            for line in lines if line.startswith("| emotion")]
    assert [row["metric"] for row in rows] == ["accuracy", "macro_f1"]
    assert rows[0]["train/eval"] == "120/60"
    for system in ("tfidf", "frozen", "native"):
        assert 0.0 <= float(rows[0][system]) <= 1.0 and float(rows[0][f"{system} s"]) > 0
    # the frozen encoder's features separate emotions far better than uniform guessing over 6 classes
    assert float(rows[0]["frozen"]) > 0.3
    # a quick run keeps no results: the published report is untouched
    assert (results.read_bytes() if results.exists() else None) == kept
