"""Generation agreement: do greedy continuations with a quantized cache follow the baseline's?

KL divergence scores each position on the baseline's own history (teacher forcing): an error
there does not feed back. In generation it does: one different token changes everything after
it. So from prompts taken from the corpus at several depths, each context of a quality unit
greedy-decodes `gen_tokens` tokens (argmax, no sampling), and per prompt two figures are kept
(REFRACT-style trajectory agreement):
- first_diff: the index of the first generated token that differs from the baseline's
  (gen_tokens when none does);
- equal: the share of generated positions whose token equals the baseline's at that position.

Prompts: for prompt i at depth d, tokens [i * n_ctx, i * n_ctx + d) of the corpus, the first one
replaced by BOS where the vocabulary adds one (as a perplexity chunk starts), so prompt i is the
start of chunk i; i runs over min(gen_prompts, n_chunk) chunks. The baseline's continuation of
each prompt is computed once and compared with every other context's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kvsweep.cells import Cell
from kvsweep.workers import llama_api


@dataclass(frozen=True)
class Prompt:
    depth: int
    tokens: np.ndarray


@dataclass
class Agreement:
    """Per prompt, in prompt order: what `gen_depth`, `gen_first_diff`, `gen_equal` hold."""

    depth: list[int] = field(default_factory=list)
    first_diff: list[int] = field(default_factory=list)
    equal: list[float] = field(default_factory=list)

    def add(self, depth: int, base: np.ndarray, other: np.ndarray) -> None:
        same = base == other
        differ = np.flatnonzero(~same)
        self.depth.append(depth)
        self.first_diff.append(int(differ[0]) if len(differ) else len(base))
        self.equal.append(float(same.mean()))

    def metrics(self) -> dict:
        return {"gen_depth": self.depth, "gen_first_diff": self.first_diff, "gen_equal": self.equal}


def depths(cell: Cell) -> list[int]:
    return [int(d) for d in cell.gen_depths.split(",") if d] if cell.gen_tokens else []


def prompts(cell: Cell, tokens: np.ndarray, n_chunk: int, add_bos: bool, bos: int) -> list[Prompt]:
    out = []
    for depth in depths(cell):
        for i in range(min(cell.gen_prompts, n_chunk)):
            p = tokens[i * cell.n_ctx : i * cell.n_ctx + depth].copy()
            if add_bos and len(p):
                p[0] = bos
            out.append(Prompt(depth, p))
    return out


def greedy(ctx: llama_api.Context, prompt: np.ndarray, n_gen: int) -> np.ndarray:
    """Greedy continuation of `prompt` on a cleared cache: n_gen argmax tokens."""
    ctx.clear()
    piece = ctx.settings.n_batch
    for pos0 in range(0, len(prompt), piece):
        ctx.decode(prompt[pos0 : pos0 + piece], pos0)  # logits for the last token only
    out = np.empty(n_gen, np.int32)
    pos = len(prompt)
    for i in range(n_gen):
        out[i] = int(np.argmax(ctx.logits(1)[0]))
        if i + 1 < n_gen:
            ctx.decode_one(int(out[i]), pos)
            pos += 1
    return out
