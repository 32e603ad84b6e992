"""The command line as users type it (subprocesses), without Ray."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT, write_matrix


def kvsweep(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvsweep", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**os.environ})


def test_dry_run_of_the_seed_matrix_names_missing_files():
    out = kvsweep("run", "--dry-run", "matrices/qwen36-35b-a3b.toml")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Qwen3.6-35B-A3B-Q8_0" in text
    assert "quality" in text and " pp " in text and " tg " in text
    assert "cannot run yet" in text
    assert "[models[0].path] model file missing" in text and "Qwen3.6-35B-A3B-Q8_0.gguf" in text
    assert "[quality.corpus] corpus file missing" in text and "wiki.test.raw" in text


def test_dry_run_of_the_demo_counts_cells():
    out = kvsweep("run", "--dry-run", "matrices/demo.toml")
    assert out.returncode == 0, out.stderr
    # 6 quality (f32 baseline + 5 configs), 5 configs x 3 depths of pp and of tg
    assert "36 cells" in out.stdout
    assert "cannot run yet" not in out.stdout


def test_bad_matrix_exits_2_with_every_problem(tmp_path):
    bad = write_matrix(tmp_path / "bad.toml", """
        [[models]]
        generate = { arch = "llama" }
        [cache]
        symmetric = ["q3_0"]
        [speed]
        depht = [0]
    """)
    out = kvsweep("run", bad, "--run-dir", tmp_path / "run")
    assert out.returncode == 2
    assert "[cache.symmetric]" in out.stderr and "[speed.depht]" in out.stderr
    assert not (tmp_path / "run" / "results").exists(), "nothing ran"


def test_not_a_run_directory(tmp_path):
    out = kvsweep("status", tmp_path)
    assert out.returncode == 2 and "not a kvsweep run directory" in out.stderr
