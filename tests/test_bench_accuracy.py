"""benchmarks/bench_accuracy.py reads what the evaluate step writes: the test split, the sets scored beside it
(val, the SZU sample) and the goals it checks them against."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline_fixtures import REPO

from dbdgan.evaluation.scores import write_scores

SCORES = {"infocus_max_f": 0.0, "infocus_adaptive_f": 0.5, "max_f": 0.9, "adaptive_f": 0.5, "mae": 0.0,
          "mean_f": 0.8, "infocus_mean_f": 0.7, "n_images": 90,
          "settings": {"split": "test", "flip_tta": True, "input_size": [416, 416]}}


def _result(test_f: float, test_mae: float, szu_f: float, szu_mae: float) -> dict:
    return {**SCORES, "infocus_max_f": test_f, "mae": test_mae,
            "val": {"infocus_max_f": 0.95, "max_f": 0.97, "mae": 0.05, "n_images": 91},
            "szu": {"infocus_max_f": szu_f, "max_f": 0.9, "mae": szu_mae, "n_images": 50},
            "efficiency": {"params_m": 3.4, "gflops": 2.0, "latency_ms_b1": 50.0}}


def _bench(tmp_path, student: dict) -> dict:
    metrics = tmp_path / "metrics"
    write_scores(metrics, "teacher", {**_result(0.89, 0.07, 0.88, 0.07), "efficiency": {"gflops": 6.5}})
    write_scores(metrics, "student", student)
    for name in ("baseline_all_blurred", "baseline_laplacian"):
        write_scores(metrics, name, {**SCORES, "infocus_max_f": 0.4, "mae": 0.3})
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_accuracy.py"), "--run", f"x={metrics}",
                           "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, check=True)
    assert "SZU max-F" in done.stdout and "BD_EFPN" in done.stdout
    return json.loads((tmp_path / "out" / "accuracy.json").read_text())


def test_the_held_out_and_szu_numbers_reach_the_table_and_the_goals(tmp_path):
    report = _bench(tmp_path, _result(0.885, 0.075, 0.872, 0.070))
    student = next(row for row in report["rows"] if row["model"] == "student")
    assert (student["szu.infocus_max_f"], student["szu.mae"], student["val.mae"]) == (0.872, 0.070, 0.05)
    assert student["input"] == "416" and student["split"] == "test"
    gap = report["gaps"][0]
    assert gap["student_meets_test_goal"] and gap["student_meets_szu_goal"] and gap["student_meets_goal"]


def test_a_student_short_of_the_szu_goal_is_reported_as_such(tmp_path):
    gap = _bench(tmp_path, _result(0.885, 0.075, 0.86, 0.070))["gaps"][0]
    assert gap["student_meets_test_goal"] and not gap["student_meets_szu_goal"] and not gap["student_meets_goal"]
