"""Cell ids: stable, content-addressed, and sensitive to everything that changes a result."""

from __future__ import annotations

import dataclasses

from kvsweep.cells import Cell

BASE = dict(kind="tg", model_name="m", model_path="/a/m.gguf", model_sha256="ab" * 32,
            type_k="q8_0", type_v="q4_0", n_depth=4096, n_gen=128, repetitions=5, host_class="cuda-h100")


def test_same_settings_same_id():
    assert Cell(**BASE).cell_id == Cell(**BASE).cell_id


def test_labels_and_paths_do_not_change_the_id():
    moved = Cell(**{**BASE, "model_name": "renamed", "model_path": "/elsewhere/m.gguf"})
    assert moved.cell_id == Cell(**BASE).cell_id


def test_every_result_field_changes_the_id():
    base = Cell(**BASE)
    changes = dict(model_sha256="cd" * 32, type_k="f16", type_v="f16", n_depth=8192, n_gen=64,
                   repetitions=3, host_class="metal-m5", flash_attn="off", n_batch=512,
                   n_ubatch=256, n_threads=8, n_gpu_layers=0, env='{"LLAMA_ATTN_ROT_DISABLE":"1"}',
                   kind="pp")
    ids = set()
    for field, value in changes.items():
        changed = Cell(**{**BASE, field: value})
        assert changed.cell_id != base.cell_id, field
        ids.add(changed.cell_id)
    assert len(ids) == len(changes)


def test_round_trip_through_a_row():
    cell = Cell(**BASE)
    assert Cell.from_row(cell.to_row()) == cell
    assert Cell.from_row(cell.to_row()).cell_id == cell.cell_id


def test_test_names_follow_llama_bench():
    assert Cell(**BASE).test_name == "tg128 @ d4096"
    assert Cell(**{**BASE, "kind": "pp", "n_prompt": 512, "n_depth": 0}).test_name == "pp512"
    assert Cell(**{**BASE, "kind": "quality", "n_ctx": 4096}).test_name == "ppl@4096"
    fields = {f.name for f in dataclasses.fields(Cell)}
    assert {"type_k", "type_v", "n_depth", "n_prompt", "n_gen", "n_batch", "n_ubatch"} <= fields


def test_ids_are_the_ones_earlier_versions_computed():
    """Run directories written before keep their cells: these ids were computed with
    dataclasses.asdict (before to_row/compute_cell_id read the fields directly)."""
    speed = Cell(kind="tg", model_name="m", model_path="/x", model_sha256="a" * 64, type_k="f16",
                 type_v="q8_0", n_depth=4096, n_gen=128, repetitions=5, host_class="h", env='{"A": "1"}')
    quality = Cell(kind="quality", model_name="q", model_path="/y", model_sha256="b" * 64, type_k="q4_0",
                   type_v="q4_0", n_ctx=512, corpus_path="/c", corpus_sha256="c" * 64, baseline="f16",
                   n_batch=512, quality_backend="CUDA", model_recipe='{"seed": 1}')
    assert speed.cell_id == "4f53ad1dd367d8d993b0"
    assert quality.cell_id == "9511bffb81958998240d"
    from dataclasses import asdict

    assert speed.to_row() == asdict(speed) and quality.to_row() == asdict(quality)
