"""Shared fixtures: a private kvsweep cache, generated models, small matrices, real Ray.

Ray on 2 cores takes seconds to start, so a test module starts one embedded cluster
(`ray_local`, module scope) and tears it down at the end; Ray tests never run in parallel.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from kvsweep.orchestrator.fleet import prepare_loopback_env

# before anything imports Ray (it reads both once per process): every test cluster binds to
# 127.0.0.1, and uses token authentication as kvsweep fleets do
prepare_loopback_env()
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Whether a speed cell is flagged host-busy depends on what else runs on the machine (CI,
# a compile, the suite run beside a busy loop), so the suite's other tests would pass or fail
# with the host's load: the detection is off for them, and tests/test_host_load.py tests it
# with an explicit limit, on a host it loads itself.
os.environ["KVSWEEP_BUSY_LIMIT"] = "off"
# An attempt row with a column the schema lacks, or set by two producers without a declared
# override, fails the test that made it (kvsweep/records.py compose_row); Ray's workers inherit it.
os.environ["KVSWEEP_STRICT_ROWS"] = "1"

ROOT = Path(__file__).resolve().parent.parent
DEMO_CORPUS = ROOT / "matrices" / "corpora" / "demo.txt"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Generated models and the sha256 cache live in a per-session directory."""
    path = tmp_path_factory.mktemp("kvsweep-cache")
    old = os.environ.get("KVSWEEP_CACHE_DIR")
    os.environ["KVSWEEP_CACHE_DIR"] = str(path)
    os.environ["KVSWEEP_FAULTS_STATE"] = str(path / "faults")
    yield path
    if old is None:
        os.environ.pop("KVSWEEP_CACHE_DIR", None)
    else:
        os.environ["KVSWEEP_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_model(_private_cache) -> Path:
    from kvsweep.workers.generated_models import ModelRecipe, cached_model

    return cached_model(ModelRecipe())


@pytest.fixture(scope="module")
def model(tiny_model):
    """The tiny generated model loaded through kvsweep's llama.cpp layer, once per module."""
    from kvsweep.workers.llama_api import Model

    m = Model(str(tiny_model))
    yield m
    m.close()


@pytest.fixture(scope="module")
def ray_local():
    """A real embedded Ray cluster (127.0.0.1, no dashboard, fixed CPUs), one per module."""
    from kvsweep.orchestrator import fleet

    fleet.start_embedded(n_workers=1, num_cpus=2)
    yield
    fleet.shutdown()


def write_matrix(path: Path, body: str, corpus: Path = DEMO_CORPUS) -> Path:
    """A matrix file whose corpus path points at the demo corpus."""
    text = textwrap.dedent(body).replace("@CORPUS@", str(corpus))
    path.write_text(text)
    return path


SMALL_MATRIX = """
    name = "small"

    [[models]]
    name = "tiny"
    generate = { arch = "llama", seed = 0 }

    [cache]
    symmetric = ["f16", "q8_0", "q4_0"]

    [quality]
    corpus = "@CORPUS@"
    n_ctx = [128]
    max_chunks = 4
    baseline = "f32"
    n_batch = 128

    [speed]
    depths = [0, 256]
    n_prompt = 32
    n_gen = 8
    repetitions = 2

    [runtime]
    cell_timeout_s = 120
"""
