"""Cells: the unit of measurement, and the contract between the orchestrator and the workers.

A cell is one figure kvsweep measures, llama-bench style: one flat record with explicit fields
(like llama-bench's `test` struct), so the plan maps 1:1 onto a Parquet table.

- kind "quality": PPL and KL divergence of cache (type_k, type_v) against `baseline` at n_ctx.
- kind "pp": prompt processing, n_prompt tokens at n_depth (llama-bench `pp512 @ d8192`).
- kind "tg": generation, n_gen tokens at n_depth (llama-bench `tg128 @ d8192`).
- kind "ceiling": the deepest depth at which the pp and tg tests of a configuration fit on a
  host class, bisected after the depth grid (workers/ceiling.py).

Fields that do not apply to a kind keep their zero value. A cell's id is a hash of every field
that changes its result (the model's and corpus's sha256 rather than their paths or labels),
so renaming a model keeps results and a changed file makes new cells.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields

QUALITY = "quality"
PROMPT = "pp"
GENERATION = "tg"
CEILING = "ceiling"
KINDS = (QUALITY, PROMPT, GENERATION, CEILING)
SPEED_KINDS = (PROMPT, GENERATION)


@dataclass(frozen=True)
class Cell:
    kind: str
    # model: label and path are for humans and for loading; sha256 identifies it
    model_name: str
    model_path: str
    model_sha256: str
    type_k: str
    type_v: str
    # llama.cpp settings that change results
    flash_attn: str = "on"  # on | off | auto (llama_context_params.flash_attn_type 1/0/-1)
    n_gpu_layers: int = 999
    n_threads: int = 0  # 0: the worker picks (physical cores), and records what it used
    n_batch: int = 2048
    n_ubatch: int = 512
    env: str = "{}"  # JSON object of environment knobs (e.g. LLAMA_ATTN_ROT_DISABLE)
    # model generation recipe (JSON) when the model is a kvsweep-generated test model, so any
    # host can make the identical file itself instead of copying it
    model_recipe: str = ""
    # quality cells
    n_ctx: int = 0
    max_chunks: int = 0  # 0: every chunk the corpus holds
    corpus_path: str = ""
    corpus_sha256: str = ""
    baseline: str = ""  # cache type of the reference context (f16, bf16, f32)
    quality_backend: str = ""  # "" = any backend; else run quality on this backend
    # which positions of a chunk are scored: "" = the second half (llama-perplexity), "all" =
    # every position from the first, so quality can be read by depth within the chunk
    score: str = ""
    # generation agreement: greedy-decode gen_tokens tokens after prompts of each depth in
    # gen_depths (comma-separated), gen_prompts prompts per depth; 0 tokens = not measured
    gen_tokens: int = 0
    gen_depths: str = ""
    gen_prompts: int = 0
    # speed cells
    n_depth: int = 0
    n_prompt: int = 0
    n_gen: int = 0
    repetitions: int = 0
    host_class: str = ""  # speed results belong to a host class
    fill: str = ""  # what fills the cache to n_depth: "" = random tokens (llama-bench), "corpus"
    # adaptive precision (kvsweep/precision.py), JSON: quality cells stop adding chunks, speed
    # cells repetitions (then `repetitions` is the most), once the target is met; "" = none
    precision: str = ""
    # ceiling cells (JSON): the depth grid it follows and the resolution of its bisection
    ceiling: str = ""
    cell_id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown cell kind {self.kind!r}")
        if not self.cell_id:
            object.__setattr__(self, "cell_id", compute_cell_id(self))

    @property
    def config(self) -> tuple[str, str]:
        return (self.type_k, self.type_v)

    @property
    def test_name(self) -> str:
        """llama-bench's name for the test: pp512, tg128 @ d4096, ppl@4096."""
        if self.kind == QUALITY:
            return f"ppl@{self.n_ctx}"
        if self.kind == CEILING:
            return "ceiling"
        base = f"pp{self.n_prompt}" if self.kind == PROMPT else f"tg{self.n_gen}"
        return f"{base} @ d{self.n_depth}" if self.n_depth else base

    def to_row(self) -> dict:
        # every field is a str or an int: a shallow dict is what asdict() gives, 8x faster
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    @classmethod
    def from_row(cls, row: dict) -> Cell:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


# Fields that never enter the id: labels and locations, not content.
_NOT_IDENTITY = {"model_name", "model_path", "corpus_path", "cell_id", "model_recipe"}


_FIELD_NAMES = tuple(f.name for f in fields(Cell))
_IDENTITY_NAMES = tuple(n for n in _FIELD_NAMES if n not in _NOT_IDENTITY)
# Fields added after results existed enter the id only when set, so a run made before them
# keeps its cell ids (and resumes) as long as it does not use them.
_DEFAULTS = {f.name: f.default for f in fields(Cell)}
_ID_WHEN_SET = {"score", "gen_tokens", "gen_depths", "gen_prompts", "fill", "precision", "ceiling"}


def compute_cell_id(cell: Cell) -> str:
    ident = {name: getattr(cell, name) for name in _IDENTITY_NAMES
             if name not in _ID_WHEN_SET or getattr(cell, name) != _DEFAULTS[name]}
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class WorkUnit:
    """Cells one worker runs in one go, all on one model (so it is loaded once).

    Quality cells of one unit share their baseline pass (same corpus, n_ctx, baseline);
    speed cells of one unit are ordered so the depth fill of (config, depth) is reused
    between the pp and tg tests, as llama-bench does.
    """

    unit_id: str
    cells: list[Cell]
    model_sha256: str
    # scheduling constraints (placement): host class for speed units, backend for quality
    host_class: str = ""
    backend: str = ""
    exclude_nodes: tuple[str, ...] = ()
    min_free_memory: int = 0
    # ceiling units: per cell id, (deepest grid depth that ran or None, first deeper depth that
    # did not fit or None), filled in by the scheduler once the series is final
    ceiling_bounds: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    # the worker it was handed to: its memory (the --memory-limit where one is set) and backend
    worker_memory: int = 0
    worker_backend: str = ""

    @property
    def kind(self) -> str:
        return self.cells[0].kind if self.cells else ""
