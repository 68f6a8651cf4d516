"""`keepers clv fit` as a user runs it: a real subprocess on a transaction CSV.

CDNOW (the 1/10 sample the BG/NBD paper uses) is written out as a CSV with a header and ISO
dates; the command must find the published estimates within 1 %. Bad input must end with
exit code 2 and one readable line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CDNOW = Path(__file__).parents[3] / "shared" / "data" / "cdnow_sample.txt"
KEEPERS = Path(sys.executable).with_name("keepers")
PUBLISHED = {
    "bgnbd": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
    "pareto_nbd": {"r": 0.55, "alpha": 10.58, "s": 0.61, "beta": 11.67},
    "gamma_gamma": {"p": 6.25, "q": 3.74, "v": 15.44},
}
COLUMNS = ["--customer-col", "cust", "--date-col", "when", "--amount-col", "spend"]


def clv_fit(csv: Path, *extra: str, calibration_end: str = "1997-09-30"):
    return subprocess.run(
        [
            str(KEEPERS),
            "clv",
            "fit",
            "--transactions",
            str(csv),
            "--calibration-end",
            calibration_end,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_clear_line(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cdnow_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clv") / "cdnow.csv"
    rows = ["cust,when,spend"]
    for line in CDNOW.read_text().splitlines():
        _, customer, day, _, dollars = line.split()
        rows.append(f"{customer},{day[:4]}-{day[4:6]}-{day[6:]},{dollars}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_fit_on_cdnow_reproduces_the_published_estimates(cdnow_csv):
    result = clv_fit(cdnow_csv, "--time-unit", "weeks", *COLUMNS, "--json")
    assert result.returncode == 0, result.stderr
    fitted = json.loads(result.stdout)
    assert fitted["customers"] == 2357
    assert fitted["repeat_buyers"] == 946
    assert fitted["calibration_end"] == "1997-09-30" and fitted["time_unit"] == "weeks"
    for model, published in PUBLISHED.items():
        assert set(published) <= fitted[model].keys()
        for name, value in published.items():
            assert fitted[model][name] == pytest.approx(value, rel=0.01), (model, name)
    assert fitted["bgnbd"]["log_likelihood"] == pytest.approx(-9582.4, abs=0.1)
    assert "log_likelihood" in fitted["pareto_nbd"]
    assert fitted["gamma_gamma"]["frequency_monetary_correlation"] == pytest.approx(
        0.114, abs=0.001
    )
    predictions = fitted["predictions"]
    assert 0 < predictions["bgnbd"]["mean_p_alive"] <= 1
    assert 0 < predictions["bgnbd"]["expected_purchases_next_52"] < 5
    assert predictions["clv"]["mean"] > 0
    assert fitted["warnings"] == []


def test_a_semicolon_file_with_compact_dates_gives_the_same_fit(cdnow_csv, tmp_path):
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text(cdnow_csv.read_text().replace(",", ";").replace("-", ""))
    result = clv_fit(semicolons, *COLUMNS, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bgnbd"]["r"] == pytest.approx(0.2426, rel=1e-3)


def test_a_missing_column_is_named(cdnow_csv):
    line = one_clear_line(
        clv_fit(
            cdnow_csv, "--customer-col", "customer", "--date-col", "when", "--amount-col", "spend"
        )
    )
    assert "'customer'" in line and "not found" in line
    assert "'cust', 'when', 'spend'" in line


def test_a_bad_date_names_the_column_and_line(cdnow_csv, tmp_path):
    lines = cdnow_csv.read_text().splitlines()
    lines[4] = "4,1997-02-31,10.00"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    line = one_clear_line(clv_fit(bad, *COLUMNS))
    assert (
        line
        == "error: column 'when', line 5: '1997-02-31' is not a date (use YYYY-MM-DD or YYYYMMDD)"
    )


def test_too_few_repeat_buyers_is_a_clear_error(tmp_path):
    rows = ["cust,when,spend"] + [f"c{i},2024-01-{i + 1:02d},10" for i in range(20)]
    rows += ["c1,2024-02-01,5", "c2,2024-02-03,7"]
    few = tmp_path / "few.csv"
    few.write_text("\n".join(rows) + "\n")
    line = one_clear_line(clv_fit(few, *COLUMNS, calibration_end="2024-03-01"))
    assert line == (
        "error: BG/NBD needs at least 5 repeat buyers (customers with frequency > 0) to fit; "
        "this data has 2"
    )


def test_a_calibration_end_before_every_purchase_is_explained(cdnow_csv):
    line = one_clear_line(clv_fit(cdnow_csv, *COLUMNS, calibration_end="1996-12-31"))
    assert "no purchases on or before calibration_end 1996-12-31" in line
    assert "1997-01-01" in line
