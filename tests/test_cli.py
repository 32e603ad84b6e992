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
    assert out.returncode == 2, out.stderr  # the plan is printed, but it cannot run as it is
    text = out.stdout
    assert "Qwen3.6-35B-A3B-Q8_0" in text
    assert "quality" in text and " pp " in text and " tg " in text
    assert "cannot run as it is" in text
    assert "[models[0].path] model file missing" in text and "Qwen3.6-35B-A3B-Q8_0.gguf" in text
    assert "[quality.corpus] corpus file missing" in text and "wiki.test.raw" in text
    # the posts' turbo types need the fork: on this host's mainline build, said per type
    assert "turbo3" in text and "no host of the fleet" in text
    assert "no build in the fleet has the cache type 'turbo3'" in text and "scripts/build_worker.py" in text


def test_dry_run_of_the_demo_counts_cells():
    out = kvsweep("run", "--dry-run", "matrices/demo.toml")
    assert out.returncode == 0, out.stderr
    # 6 quality (f32 baseline + 5 configs), 5 configs x 3 depths of pp and of tg
    assert "36 cells" in out.stdout
    assert "cannot run as it is" not in out.stdout


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


# -- bad input: one or a few lines naming the file, the key or the query, exit 2, no traceback --

SPEED_ONLY = """
    [[models]]
    path = "@MODEL@"
    [cache]
    symmetric = ["f16"]
    [speed]
    depths = [0]
    n_prompt = 8
    n_gen = 4
    repetitions = 2
"""


def no_traceback(out: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) <= 6, out.stderr


def test_a_model_file_that_is_not_gguf(tmp_path):
    model = tmp_path / "notgguf.gguf"
    model.write_text("just some text\n")
    matrix = tmp_path / "m.toml"
    matrix.write_text(SPEED_ONLY.replace("@MODEL@", str(model)))
    dry = kvsweep("run", "--dry-run", matrix)
    assert dry.returncode == 2 and "Traceback" not in dry.stdout + dry.stderr
    assert "[models[0].path]" in dry.stdout and "is not a GGUF file" in dry.stdout and str(model) in dry.stdout
    run = kvsweep("run", matrix, "--run-dir", tmp_path / "run")
    assert run.returncode == 2, run.stderr
    no_traceback(run)
    assert "[models[0].path]" in run.stderr and "is not a GGUF file" in run.stderr
    assert not (tmp_path / "run" / "results").exists()


def test_a_gguf_that_llama_cpp_cannot_load(tmp_path):
    """A well-formed GGUF of an architecture llama.cpp does not know."""
    import gguf

    model = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(str(model), "kvsweep-alien")
    for key, value in (("block_count", 1), ("embedding_length", 64), ("attention.head_count", 1)):
        w.add_uint32(f"kvsweep-alien.{key}", value)
    w.add_tensor("token_embd.weight", __import__("numpy").zeros((4, 64), dtype="float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    matrix = tmp_path / "m.toml"
    matrix.write_text(SPEED_ONLY.replace("@MODEL@", str(model)))
    out = kvsweep("run", matrix, "--run-dir", tmp_path / "run")
    assert out.returncode == 2
    no_traceback(out)
    assert "[models[0].path] llama.cpp cannot load" in out.stderr and "alien.gguf" in out.stderr
    assert kvsweep("run", "--dry-run", matrix).returncode == 2


def test_absurd_values_are_refused_and_name_their_key(tmp_path):
    matrix = write_matrix(tmp_path / "m.toml", """
        [[models]]
        generate = { arch = "llama" }
        [cache]
        symmetric = ["f16"]
        [speed]
        depths = [0, 99999999999]
        repetitions = 99999999999999999999
        [runtime]
        cell_timeout_s = 1e12
    """)
    out = kvsweep("run", "--dry-run", matrix)
    assert out.returncode == 2
    no_traceback(out)
    for key in ("[speed.repetitions]", "[speed.depths]", "[runtime.cell_timeout_s]"):
        assert key in out.stderr and "at most" in out.stderr


def test_depths_past_the_training_context_are_a_warning_not_an_error(tmp_path):
    matrix = write_matrix(tmp_path / "m.toml", """
        [[models]]
        generate = { arch = "llama", context_length = 1024 }
        [cache]
        symmetric = ["f16"]
        [speed]
        depths = [0, 4096]
    """)
    out = kvsweep("run", "--dry-run", matrix)
    assert out.returncode == 0, out.stderr
    assert "warnings: 1" in out.stdout and "trained for 1024" in out.stdout and "[speed.depths]" in out.stdout


def test_sql_mistakes_are_one_message(tmp_path):
    import json

    (tmp_path / "manifest.json").write_text(json.dumps({"run_id": "r", "sessions": []}))
    for query in ("SELECT nope FROM quality", "SELEC 1", "SELECT * FROM no_such_view"):
        out = kvsweep("sql", tmp_path, query)
        assert out.returncode == 2, out.stdout + out.stderr
        no_traceback(out)
        assert "the query failed" in out.stderr and query in out.stderr
    ok = kvsweep("sql", tmp_path, "SELECT count(*) AS n FROM attempts")
    assert ok.returncode == 0 and "0" in ok.stdout


def test_debug_shows_the_traceback(tmp_path):
    out = kvsweep("--debug", "sql", tmp_path, "SELECT 1")  # not a run directory
    assert out.returncode == 2 and "Traceback" in out.stderr and "not a kvsweep run directory" in out.stderr
    plain = kvsweep("sql", tmp_path, "SELECT 1")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
