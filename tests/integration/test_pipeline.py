"""The CLI pipeline end to end: synth -> centralized / simulate (Flower simulation engine) -> compare,
and the model-applying commands on the real Edge-IIoTset rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotad.cli import main
from iotad.core.runs import METRIC_KEYS
from tests.conftest import REAL_MITM, REAL_NORMAL, respell

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    assert main(["synth", "--devices", "3", "--rows-per-device", "1500", "--seed", "3", "--out", str(root / "D")]) == 0
    return root


def test_centralized_and_two_round_simulation(work: Path) -> None:
    assert main(["centralized", "--data", str(work / "D"), "--epochs", "4", "--out", str(work / "C")]) == 0
    assert main(["simulate", "--data", str(work / "D"), "--rounds", "2", "--local-epochs", "2",
                 "--out", str(work / "F")]) == 0
    # Same data, same seed: the same model (seeded initial weights, single-threaded training).
    assert main(["centralized", "--data", str(work / "D"), "--epochs", "4", "--out", str(work / "C2")]) == 0
    assert (work / "C" / "metrics.json").read_bytes() == (work / "C2" / "metrics.json").read_bytes()
    # Federated too, although Flower draws random node ids and replies arrive in any order.
    assert main(["simulate", "--data", str(work / "D"), "--rounds", "2", "--local-epochs", "2",
                 "--out", str(work / "F2")]) == 0
    assert (work / "F" / "metrics.json").read_bytes() == (work / "F2" / "metrics.json").read_bytes()
    central = json.loads((work / "C" / "metrics.json").read_text())
    federated = json.loads((work / "F" / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(central) and set(central) == set(federated) - {"device_confusion",
                                                                                    "devices_evaluated"}
    assert central["data_kind"] == federated["data_kind"] == "synthetic"
    # Same splits on both sides: the evaluation sets are the same rows.
    assert (central["n_normal"], central["n_attack"]) == (federated["n_normal"], federated["n_attack"])
    # The devices' own confusion counts agree with the merged histograms at the global threshold.
    assert federated["device_confusion"] == federated["confusion"]
    history = json.loads((work / "F" / "history.json").read_text())
    assert [r["round"] for r in history] == [1, 2]
    assert all(r["devices_participating"] == 3 and r["devices_failed"] == 0 for r in history)
    bundle = json.loads((work / "F" / "model" / "bundle.json").read_text())
    assert bundle["round"] == 2 and bundle["threshold"] == federated["threshold"]

    assert main(["compare", "--runs", str(work / "C"), str(work / "F"), "--out", str(work / "REP")]) == 0
    report = (work / "REP" / "report.md").read_text()
    assert "Synthetic data" in report
    for png in ("loss.png", "f1_fpr.png", "roc.png", "confusion.png", "per_attack_recall.png"):
        assert (work / "REP" / png).stat().st_size > 1000


def test_device_bundles_carry_their_own_normalisation(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Per-device normalisation: the run's model/ has the shared weights and threshold only, each device's
    bundle its own scaler; scoring a device's traffic needs that device's bundle."""
    csv = work / "D" / "device-1" / "traffic.csv"
    for run in ("C", "F"):
        shared = json.loads((work / run / "model" / "bundle.json").read_text())
        own = [json.loads((work / run / "devices" / f"device-{k}" / "model" / "bundle.json").read_text())
               for k in range(3)]
        assert shared["scaler"] is None and shared["feature_names"] == own[0]["feature_names"]
        assert len({json.dumps(b["scaler"]) for b in own}) == 3  # fitted on each device's own rows
        assert {b["threshold"] for b in own} == {shared["threshold"]}
        assert main(["score", "--model", str(work / run), "--csv", str(csv), "--out", str(work / "x.csv")]) == 2
        assert "normalises per device" in capsys.readouterr().err
        out = work / f"{run}-device-1.json"
        assert main(["evaluate", "--model", str(work / run / "devices" / "device-1" / "model"), "--csv", str(csv),
                     "--out", str(out)]) == 0
        assert json.loads(out.read_text())["n_attack"] > 0


def test_split_seed_fixes_the_rows_and_seed_the_training(work: Path) -> None:
    """``--split-seed`` picks the rows (the scaler is fitted on the training rows), ``--seed`` the training."""
    def run(name: str, *seeds: str) -> tuple[dict, dict]:
        assert main(["centralized", "--data", str(work / "D"), "--epochs", "1", *seeds, "--out", str(work / name)]) == 0
        # Per-device normalisation: each device's bundle holds its scaler (the run's model/ only the weights).
        return (json.loads((work / name / "devices" / "device-0" / "model" / "bundle.json").read_text())["scaler"],
                json.loads((work / name / "run.json").read_text()))

    scaler0, run0 = run("S0", "--seed", "0")
    scaler1, run1 = run("S1", "--seed", "1")
    scaler10, run10 = run("S10", "--seed", "1", "--split-seed", "0")
    assert scaler10 == scaler0 != scaler1
    assert (run0["split_seed"], run1["split_seed"], run10["split_seed"], run10["seed"]) == (0, 1, 0, 1)


def test_real_rows_score_is_independent_of_empty_spelling(real: Path, tmp_path: Path) -> None:
    normal, mitm = real / REAL_NORMAL, real / REAL_MITM
    run = tmp_path / "R2"
    assert main(["centralized", "--train-csv", str(normal), "--eval-csv", str(normal), str(mitm),
                 "--epochs", "3", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_attack"] > 0 and metrics["n_normal"] > 0 and "MITM" in metrics["per_attack_recall"]
    assert json.loads((run / "run.json").read_text())["rejected"]["shifted"] > 0

    respelled = tmp_path / "respelled.csv"
    respelled.write_text(respell(mitm.read_text()))
    assert respelled.read_text() != mitm.read_text()
    assert main(["score", "--model", str(run), "--csv", str(mitm), "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["score", "--model", str(run), "--csv", str(respelled), "--out", str(tmp_path / "b.csv")]) == 0
    a, b = (tmp_path / "a.csv").read_bytes(), (tmp_path / "b.csv").read_bytes()
    assert a == b and a.count(b"\n") > 100

    assert main(["evaluate", "--model", str(run), "--csv", str(mitm), "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["n_normal"] == 0


def test_score_reports_rejected_rows_and_fails_on_nothing_valid(
    real: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: a CSV of truncated rows printed "scored 0 rows" and exited 0."""
    normal = real / REAL_NORMAL
    run = tmp_path / "R"
    assert main(["centralized", "--train-csv", str(normal), "--eval-csv", str(normal), "--epochs", "1",
                 "--members", "1", "--out", str(run)]) == 0
    lines = normal.read_text().splitlines()
    truncated = tmp_path / "truncated.csv"
    truncated.write_text("\n".join([lines[0], *(ln[: len(ln) // 2] for ln in lines[1:50])]) + "\n")
    capsys.readouterr()
    assert main(["score", "--model", str(run), "--csv", str(truncated), "--out", str(tmp_path / "t.csv")]) == 2
    # rich wraps long lines: compare with white space folded
    assert "no valid row to score (49 read; rejected: column_count 49)" in " ".join(capsys.readouterr().err.split())
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("\n".join([*lines[:11], *(ln[: len(ln) // 2] for ln in lines[11:15])]) + "\n")
    assert main(["score", "--model", str(run), "--csv", str(mixed), "--out", str(tmp_path / "m.csv")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "scored 10 of 14 rows" in err and "rejected 4, column_count 4" in err
    assert (tmp_path / "m.csv").read_text().count("\n") == 11  # header + every valid row


def test_unknown_attack_type_spellings_keep_every_row(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: an Attack_type spelled otherwise than the release's 14 names lost every row as bad_label."""
    import csv

    run = tmp_path / "R"
    assert main(["centralized", "--data", str(work / "D"), "--epochs", "1", "--members", "1", "--out", str(run)]) == 0
    model = run / "devices" / "device-0" / "model"
    original = work / "D" / "device-0" / "traffic.csv"
    with open(original, newline="") as f:
        rows = list(csv.reader(f))
    t = rows[0].index("Attack_type")
    respelled = {"DDoS_UDP": "ddos-udp attack", "Normal": "normal", "XSS": "Teleport"}  # two certain, one unknown
    for row in rows[1:]:
        row[t] = respelled.get(row[t], row[t])
    renamed = tmp_path / "renamed.csv"
    with open(renamed, "w", newline="") as f:
        csv.writer(f).writerows(rows)

    assert main(["evaluate", "--model", str(model), "--csv", str(original), "--out", str(tmp_path / "a.json")]) == 0
    assert main(["evaluate", "--model", str(model), "--csv", str(renamed), "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert (b["n_normal"], b["n_attack"]) == (a["n_normal"], a["n_attack"]) and b["rejected"] == a["rejected"]
    assert b["per_attack_recall"]["Teleport"] == a["per_attack_recall"]["XSS"] and "XSS" not in b["per_attack_recall"]
    assert b["per_attack_recall"]["DDoS_UDP"] == a["per_attack_recall"]["DDoS_UDP"]
    xss = sum(row[t] == "Teleport" for row in rows[1:])
    assert xss > 0 and b["label_notes"] == {"unknown_type": xss, "label_type_mismatch": 0, "label_from_type": 0}

    capsys.readouterr()
    assert main(["score", "--model", str(model), "--csv", str(renamed), "--out", str(tmp_path / "s.csv")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"scored {len(rows) - 1} of {len(rows) - 1} rows" in err and f"kept with unknown_type {xss}" in err


def test_unusable_input_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    assert main(["score", "--model", str(tmp_path), "--csv", str(bad), "--out", str(tmp_path / "s.csv")]) == 2
    assert main(["centralized", "--train-csv", str(tmp_path / "missing.csv"), "--eval-csv", str(bad),
                 "--out", str(tmp_path / "R")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
