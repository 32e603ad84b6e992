"""Matrix validation: every error names the file, the key and the fix."""

from __future__ import annotations

import pytest

from conftest import DEMO_CORPUS, ROOT, write_matrix
from kvsweep.orchestrator.inputs import resolve_inputs
from kvsweep.cache_types import MAINLINE_TYPES
from kvsweep.orchestrator.matrix import BuildTypes, MatrixError, load_matrix

GOOD = """
    [[models]]
    generate = { arch = "llama" }
    [cache]
    symmetric = ["f16", "q8_0"]
    [quality]
    corpus = "@CORPUS@"
    n_ctx = [128]
"""


def problems_of(tmp_path, body: str) -> list[str]:
    path = write_matrix(tmp_path / "m.toml", body)
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    for p in err.value.problems:
        assert str(path.resolve()) in p, "every problem names the file"
    return err.value.problems


def test_shipped_matrices_load():
    demo = load_matrix(ROOT / "matrices" / "demo.toml")
    assert demo.name == "demo" and demo.quality.baseline == "f32"
    seeds = load_matrix(ROOT / "matrices" / "qwen36-35b-a3b.toml")
    assert ("q8_0", "turbo4") in seeds.configs and ("turbo3", "turbo3") in seeds.configs
    assert seeds.quality.n_ctx == (4096, 16384)
    assert seeds.speed.depths[-1] == 524288
    depth = load_matrix(ROOT / "matrices" / "depth-demo.toml")
    assert depth.quality.score == "all" and depth.quality.generation.depths == (16, 128)
    assert depth.speed.fill == "corpus"


MAINLINE_BUILD = BuildTypes("cpu-box (mainline abc1234)", frozenset(MAINLINE_TYPES))


def test_a_cache_type_no_build_has_names_the_builds(tmp_path):
    path = write_matrix(tmp_path / "m.toml", GOOD.replace('"q8_0"]', '"q3_0"]'))
    load_matrix(path)  # a name like any other, until the fleet's builds are known
    with pytest.raises(MatrixError) as err:
        load_matrix(path, [MAINLINE_BUILD])
    (p,) = err.value.problems
    assert "[cache.symmetric]" in p and "q3_0" in p and "cpu-box (mainline abc1234)" in p
    assert "q8_0" in p and "iq4_nl" in p, "the builds' types are listed"


def test_a_fork_type_on_a_mainline_fleet_says_which_build_it_needs(tmp_path):
    path = write_matrix(tmp_path / "m.toml", GOOD.replace('"q8_0"]', '"turbo3"]'))
    with pytest.raises(MatrixError) as err:
        load_matrix(path, [MAINLINE_BUILD])
    (p,) = err.value.problems
    assert "'turbo3'" in p and "turboquant fork" in p and "scripts/build_worker.py" in p
    fork = BuildTypes("tq-box (turboquant 69d8e4b)", frozenset(MAINLINE_TYPES + ("turbo3",)))
    assert load_matrix(path, [MAINLINE_BUILD, fork]).configs[-1] == ("turbo3", "turbo3")


def test_a_name_no_build_can_have_is_refused_at_once(tmp_path):
    (p,) = problems_of(tmp_path, GOOD.replace('"q8_0"]', '"Q8 0"]'))
    assert "[cache.symmetric]" in p and "not a cache type name" in p


def test_quantized_v_needs_flash_attention(tmp_path):
    (p,) = problems_of(tmp_path, GOOD + '[runtime]\nflash_attn = "off"\n')
    assert "[runtime.flash_attn]" in p and "q8_0" in p and 'flash_attn = "on"' in p


def test_quantized_k_alone_is_fine_without_flash_attention(tmp_path):
    body = GOOD.replace('symmetric = ["f16", "q8_0"]', 'pairs = [["q8_0", "f16"]]')
    m = load_matrix(write_matrix(tmp_path / "m.toml", body + '[runtime]\nflash_attn = "off"\n'))
    assert m.configs == (("q8_0", "f16"),)


def test_unknown_key_suggests_nearest(tmp_path):
    problems = problems_of(tmp_path, GOOD.replace("n_ctx", "n_cxt"))
    assert any("[quality.n_cxt]" in p and "did you mean 'n_ctx'" in p for p in problems)


def test_empty_and_duplicate_lists(tmp_path):
    problems = problems_of(tmp_path, GOOD.replace('["f16", "q8_0"]', '["f16", "f16"]').replace("[128]", "[]"))
    assert any("[cache.symmetric]" in p and "more than once" in p for p in problems)
    assert any("[quality.n_ctx]" in p and "non-empty" in p for p in problems)


def test_k_without_v(tmp_path):
    problems = problems_of(tmp_path, GOOD.replace('symmetric = ["f16", "q8_0"]', 'k = ["f16"]'))
    assert any("[cache.v]" in p for p in problems)


def test_cartesian_pairs_and_symmetric_combine(tmp_path):
    body = GOOD.replace('symmetric = ["f16", "q8_0"]',
                        'k = ["f16", "q8_0"]\nv = ["q4_0"]\nsymmetric = ["f16"]\npairs = [["q8_0", "q4_0"]]')
    m = load_matrix(write_matrix(tmp_path / "m.toml", body))
    # symmetric first, then the product; the pair already in the product is swept once
    assert m.configs == (("f16", "f16"), ("f16", "q4_0"), ("q8_0", "q4_0"))


def test_baseline_must_be_unquantized(tmp_path):
    problems = problems_of(tmp_path, GOOD + 'baseline = "q8_0"\n')
    assert any("[quality.baseline]" in p and "not allowed" in p and "f32" in p for p in problems)


def test_missing_model_file_is_named(tmp_path):
    body = GOOD.replace('generate = { arch = "llama" }', f'path = "{tmp_path}/nope.gguf"')
    inputs = resolve_inputs(load_matrix(write_matrix(tmp_path / "m.toml", body)))
    (p,) = inputs.problems
    assert "[models[0].path]" in p and "nope.gguf" in p and "missing" in p and "sha256" in p


def test_corpus_shorter_than_two_contexts(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the cache " * 40)
    path = write_matrix(tmp_path / "m.toml", GOOD.replace("[128]", "[512]"), corpus=short)
    inputs = resolve_inputs(load_matrix(path))
    (p,) = inputs.problems
    assert "[quality.corpus]" in p and "1024" in p and "2 x n_ctx" in p


def test_long_enough_corpus_passes(tmp_path):
    inputs = resolve_inputs(load_matrix(write_matrix(tmp_path / "m.toml", GOOD)))
    assert inputs.problems == []
    assert inputs.corpus_tokens["tiny-llama"] >= 256
    assert len(inputs.corpus_sha256) == 64 and DEMO_CORPUS.read_text() == inputs.corpus_text


def test_measures_nothing(tmp_path):
    problems = problems_of(tmp_path, GOOD.split("[quality]")[0])
    assert any("measures nothing" in p for p in problems)


def test_scoring_generation_and_fill_settings_are_checked(tmp_path):
    problems = problems_of(tmp_path, GOOD + 'score = "first-half"\n'
                           'generation = { tokens = 64, depths = [100], prompts = 2 }\n'
                           '[speed]\nfill = "text"\n')
    assert any("[quality.score]" in p and "second-half, all" in p for p in problems)
    assert any("[quality.generation.depths]" in p and "[100] + 64 tokens do not fit n_ctx 128" in p
               for p in problems)
    assert any("[speed.fill]" in p and "random, corpus" in p for p in problems)
    problems = problems_of(tmp_path, GOOD + 'generation = { tokens = 8, depth = [16] }\n')
    assert any("[quality.generation.depth]" in p and "did you mean 'depths'?" in p for p in problems)


def test_a_corpus_fill_needs_a_text(tmp_path):
    speed_only = GOOD.split("[quality]")[0] + '[speed]\nfill = "corpus"\n'
    inputs = resolve_inputs(load_matrix(write_matrix(tmp_path / "m.toml", speed_only)))
    assert any("[speed.fill]" in p and "set speed.corpus" in p for p in inputs.problems)
    inputs = resolve_inputs(load_matrix(write_matrix(tmp_path / "m.toml", speed_only + 'corpus = "nope.txt"\n')))
    assert any("[speed.corpus]" in p and "nope.txt is missing" in p for p in inputs.problems)
    # with a [quality] corpus, the fill uses it, and speed cells carry it in their identity
    m = load_matrix(write_matrix(tmp_path / "m.toml", GOOD + '[speed]\nfill = "corpus"\n'))
    inputs = resolve_inputs(m)
    assert inputs.problems == [] and inputs.fill_sha256 == inputs.corpus_sha256
    from kvsweep.orchestrator.plan import expand

    speed = [c for c in expand(m, inputs, ["x"]) if c.kind != "quality"]
    assert speed and all(c.fill == "corpus" and c.corpus_sha256 == inputs.corpus_sha256 for c in speed)
