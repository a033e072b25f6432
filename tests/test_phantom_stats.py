"""breast_d2.data.phantom.measure and tools/phantom_stats.py: the cohort against its anchors."""
import dataclasses
import json

import pytest

from breast_d2.data.phantom.measure import Anchor, measure_cohort, table_rows, wilson_interval
from helpers import load_tool


def _record(extents, bpe=None):
    info = {} if bpe is None else {"bpe": bpe}
    return {"lesions": [{"extent_mm": e, "kinetics": {"curve_type": "III"}} for e in extents],
            "info": info}


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_range_and_proportion_checks():
    records = [_record([(12, 11, 9)], {"category": "mild", "enhancing_fgt_fraction": [0.3, 0.45]}),
               _record([(8, 9, 9.5), (30, 20, 20)])]
    rows = {m.anchor.feature: m for m in measure_cohort(records)}
    size = rows["mass size: longest label extent"]
    assert size.n == 3 and size.inside is False  # 9.5 mm < 10.7 mm
    assert rows["BPE mild: enhancing fraction of FGT (per breast)"].inside is True
    assert rows["BPE marked: enhancing fraction of FGT (per breast)"].inside is None
    prop = Anchor("cases with 2 masses", "40-60 %", "test", 0.4, 0.6, "proportion",
                  lambda recs: (sum(len(r["lesions"]) == 2 for r in recs), len(recs)))
    (m,) = measure_cohort(records * 10, [prop])
    assert m.inside is True and m.summary.startswith("10/20 = 0.50")
    (m,) = measure_cohort([_record([])] * 40, [prop])
    assert m.inside is False  # 0/40: the interval 0-0.09 misses 0.4-0.6


def test_tool_check_exit_codes(tmp_path, capsys):
    tool = load_tool("phantom_stats")
    good = tmp_path / "good"
    good.mkdir()
    (good / "phantom.json").write_text(json.dumps({"cases": [_record([(12, 11, 9)])]}))
    assert tool.main(["--phantom", str(good), "--check", "--out", str(tmp_path / "t.md")]) == 0
    assert "| mass size: longest label extent" in (tmp_path / "t.md").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "phantom.json").write_text(json.dumps({"cases": [_record([(9, 9, 9)])]}))
    assert tool.main(["--phantom", str(bad)]) == 0
    assert tool.main(["--phantom", str(bad), "--check"]) == 1
    assert "outside the published range: mass size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        tool.main(["--phantom", str(tmp_path / "missing")])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_proportion_of_a_published_sample_is_compared_with_its_interval():
    # 35 of 80 masses against "57.4 % of 101": the point 0.574 lies above the cohort's interval
    # (0.33-0.55), the published sample's own interval (58/101: 0.48-0.67) does not.
    records = [_record([(12, 11, 9)] * 35)] + [_record([(12, 11, 9)] * 45)]
    share = lambda recs: (len(recs[0]["lesions"]), sum(len(r["lesions"]) for r in recs))  # noqa: E731
    point = Anchor("type III", "57.4 % of 101", "test", 0.574, 0.574, "proportion", share)
    (m,) = measure_cohort(records, [point])
    assert m.summary.startswith("35/80 = 0.44 (95 % CI 0.33-0.55)") and m.inside is False
    sample = dataclasses.replace(point, published_n=101)
    assert sample.published_range() == pytest.approx((0.4768, 0.6662), abs=1e-4)
    assert point.published_range() == (0.574, 0.574)
    (m,) = measure_cohort(records, [sample])
    assert m.inside is True
    (cells,) = table_rows([m])
    assert cells[1] == "57.4 % of 101 [95 % CI 0.48-0.67] (test)"
