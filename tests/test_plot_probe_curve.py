"""tools/plot_probe_curve.py: checkpoint seconds from metrics.jsonl, the chosen cell only, mean ± std over the
chosen seeds, averaged initial weights, the figure, and one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import procs

ROOT = Path(__file__).resolve().parents[1]
TOOL = [sys.executable, str(ROOT / "tools" / "plot_probe_curve.py")]


def _probe(path: Path, rows: list[tuple[str, str, str, float]]) -> Path:
    data = {"layers": ["all"], "poolings": ["meanstd"],
            "tasks": {"kw": {"rows": [{"source": s, "layers": la, "pooling": p, "score": v, "dim": 1,
                                       "weight_decay": 0.1} for s, la, p, v in rows]}}}
    path.write_text(json.dumps(data))
    return path


def _run(path: Path, start: float, steps: list[int]) -> Path:
    path.mkdir()
    lines = [{"time": start + 10.0, "kind": "train", "step": 100, "s_per_step": 0.05}]  # started at start + 5
    lines += [{"time": start + 5.0 + 0.1 * s, "kind": "checkpoint", "step": s, "path": "x"} for s in steps]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def test_table_figure_and_errors(tmp_path):
    p1 = _probe(tmp_path / "a.json", [("a@500", "all", "meanstd", 0.5), ("a@500", "-1", "meanstd", 0.9),
                                      ("a@500", "all", "mean", 0.9), ("a@1000", "all", "meanstd", 0.6),
                                      ("initial weights", "all", "meanstd", 0.2), ("log-mel", "-", "meanstd", 0.4),
                                      ("log-mel", "-", "mean", 0.9)])
    p2 = _probe(tmp_path / "b.json", [("b@500", "all", "meanstd", 0.7), ("c@1000", "all", "meanstd", 0.1),
                                      ("initial weights", "all", "meanstd", 0.4)])
    png = tmp_path / "curve.png"
    cmd = TOOL + ["--probe", str(p1), "--probe", str(p2), "--run", f"a={_run(tmp_path / 'a', 0.0, [500, 1000])}",
                  "--seeds", "a,b", "--out", str(png)]
    res = procs.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "| a | 500 | 50 | 0.500 |" in lines and "| a | 1000 | 100 | 0.600 |" in lines  # 0.1 s/update from start
    assert "| b | 500 | - | 0.700 |" in lines and "| c | 1000 | - | 0.100 |" in lines
    assert "| mean ± std | 500 | - | 0.600 ± 0.141 (n=2) |" in lines  # 0.5 and 0.7; c is not a seed
    assert not any(line.startswith("| mean ± std | 1000") for line in lines)  # only a saved step 1000
    assert "| initial weights | - | - | 0.300 ± 0.141 (n=2) |" in lines and "| log-mel | - | - | 0.400 |" in lines
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert procs.run(TOOL + ["--help"], capture_output=True).returncode == 0
    for bad, msg in ((TOOL + ["--probe", str(p1), "--pooling", "cls"], "no RUN@STEP source"),
                     (TOOL + ["--probe", str(tmp_path / "missing.json")], "missing.json"),
                     (TOOL + ["--probe", str(p1), "--run", "a"], "expected NAME=RUN_DIR"),
                     (TOOL, "--probe")):
        r = procs.run(bad, capture_output=True, text=True)
        assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and msg in r.stderr, r.stderr
