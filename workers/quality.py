"""The quality pass: perplexity and KL divergence, llama-perplexity's way, without logit files.

llama-perplexity needs two runs for KL: one writes the baseline's log-probs to disk (about
n_chunk * n_ctx/2 * n_vocab * 2 bytes: gigabytes for a 248K vocabulary), the next reads them.
Here the baseline context and every compared context live side by side on one worker and
decode the same chunk piece by piece; each piece is reduced to per-token figures at once, so
extra memory is bounded by one piece and does not grow with the corpus.

Definitions (tools/perplexity/perplexity.cpp): the corpus is tokenized whole and cut into
n_chunk = n_tokens // n_ctx non-overlapping chunks; each chunk's first token is replaced by
BOS when the vocabulary adds one; the KV cache is cleared between chunks; only the second half
is scored: logits at positions first = n_ctx // 2 .. n_ctx - 2 predict the next token.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from kvsweep import precision, records
from kvsweep.cells import Cell
from kvsweep.workers import faults, generation, llama_api, probe
from kvsweep.workers.fallback import FallbackCheck, context_columns, shared_check
from kvsweep.workers.kl_math import Reducer
from kvsweep.workers.failures import ExpectedFailure, failure_outcome

# A quantized run whose PPL is this many times the baseline's is flagged: garbage output
# (e.g. a Metal command buffer that failed silently) rather than a quantization effect.
IMPLAUSIBLE_PPL_RATIO = 10.0


class CorpusTooShort(ExpectedFailure, ValueError):
    pass


def chunk_count(n_tokens: int, n_ctx: int, max_chunks: int) -> int:
    """llama-perplexity's n_chunk: whole chunks the corpus holds, optionally capped."""
    if n_tokens < 2 * n_ctx:
        raise CorpusTooShort(
            f"the corpus tokenizes to {n_tokens} tokens; perplexity at n_ctx {n_ctx} needs at "
            f"least {2 * n_ctx} (2 x n_ctx): use a longer corpus or a smaller n_ctx"
        )
    n = n_tokens // n_ctx
    return min(n, max_chunks) if max_chunks > 0 else n


@dataclass
class _Compared:
    """One compared cache configuration of the group and what it has produced so far."""

    cell: Cell
    ctx: llama_api.Context | None  # None when it is the baseline configuration itself
    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)
    failure: records.CellOutcome | None = None
    nonfinite: bool = False
    agreement: generation.Agreement | None = None
    chunk_kl: list[float] = field(default_factory=list)  # mean KL of each chunk run, in order

    def end_chunk(self, mark: int) -> None:
        """Close the chunk whose pieces were appended after `mark` (parts' length before it)."""
        pieces = self.parts.get("kld", [])[mark:]
        n = sum(len(p) for p in pieces)
        if n:
            self.chunk_kl.append(float(sum(float(np.sum(p, dtype=np.float64)) for p in pieces) / n))


def run_quality_group(
    model: llama_api.Model,
    cells: list[Cell],
    tokens: np.ndarray,
    n_threads: int,
    reducer: Reducer,
    fallback: FallbackCheck | None = None,
    split_on_oom: bool = False,
) -> Generator[tuple[int, int], None, list[records.CellOutcome]]:
    """Run every quality cell of `cells` (one model, corpus, n_ctx and baseline) together.

    A generator: yields (chunks done, chunks total) after each chunk, so the caller can show
    progress and prove liveness, and returns one outcome per cell. With `split_on_oom`, an
    out-of-memory of any context ends the group (OutOfMemory propagates: the unit is too big
    for this worker and is run again in parts); without it, a compared context's OOM is that
    cell's outcome and the others go on.
    """
    head = cells[0]
    # llama-perplexity scores the second half of each chunk; score = "all" scores from the start
    n_ctx, first = head.n_ctx, (0 if head.score == "all" else head.n_ctx // 2)
    started = time.time()
    n_chunk = chunk_count(len(tokens), n_ctx, head.max_chunks)
    # chunks are added until the precision target is met (kvsweep/precision.py), if one is set
    target = precision.QualityPrecision.from_json(head.precision)
    stop_reason = (precision.STOP_MAX_CHUNKS if n_chunk < chunk_count(len(tokens), n_ctx, 0)
                   else precision.STOP_CORPUS_END)
    piece = min(head.n_batch, n_ctx)
    add_bos, bos = model.info.add_bos, model.info.bos
    gen_prompts = generation.prompts(head, tokens, n_chunk, add_bos, bos)
    n_steps = n_chunk + len(gen_prompts)

    def settings(type_k: str, type_v: str) -> llama_api.ContextSettings:
        return llama_api.ContextSettings(
            type_k=type_k,
            type_v=type_v,
            n_ctx=n_ctx,
            n_batch=piece,
            n_ubatch=min(head.n_ubatch, piece),
            flash_attn=head.flash_attn,
            n_threads=n_threads,
        )

    base = llama_api.Context(model, settings(head.baseline, head.baseline))
    compared: list[_Compared] = []
    contexts = 1 + sum(1 for c in cells if not c.type_k == c.type_v == c.baseline)
    try:
        for cell in cells:
            try:
                faults.maybe_inject(cell, contexts)
                if cell.type_k == cell.type_v == cell.baseline:
                    compared.append(_Compared(cell, None))  # scored from the baseline itself
                    continue
                compared.append(_Compared(cell, llama_api.Context(model, settings(*faults.context_types(cell)))))
            except llama_api.OutOfMemory:
                if split_on_oom:
                    raise
                item = _Compared(cell, None)
                item.failure = failure_outcome(cell, started, sys.exc_info()[1])
                compared.append(item)
            except (llama_api.LlamaError, faults.InjectedError) as exc:
                item = _Compared(cell, None)
                item.failure = failure_outcome(cell, started, exc)
                compared.append(item)
        live = [c for c in compared if c.failure is None]

        chunks_run = 0
        for chunk in range(n_chunk):
            start = chunk * n_ctx
            marks = [len(c.parts.get("kld", [])) for c in live]
            base.clear()
            for c in live:
                if c.ctx is not None and c.failure is None:
                    c.ctx.clear()
            for pos0 in range(0, n_ctx, piece):
                n = min(piece, n_ctx - pos0)
                batch = tokens[start + pos0 : start + pos0 + n].copy()
                if pos0 == 0 and add_bos:
                    batch[0] = bos  # llama-perplexity replaces, does not prepend
                n_out = base.decode(batch, pos0, output_from=first)
                # scored rows: positions max(first, pos0) .. n_ctx - 2
                p_lo = max(first, pos0)
                p_hi = min(pos0 + n, n_ctx - 1)
                n_score = max(0, p_hi - p_lo)
                next_tokens = tokens[start + p_lo + 1 : start + p_hi + 1]
                base_logits = base.logits(n_out)[:n_score] if n_score else None
                base_rows = reducer.base_rows(base_logits, next_tokens) if n_score else None
                for c in live:
                    if c.failure is not None:
                        continue
                    try:
                        if c.ctx is not None:
                            c.ctx.decode(batch, pos0, output_from=first)
                        if not n_score:
                            continue
                        if c.ctx is None:  # the baseline configuration itself
                            nll = base_rows.nll
                            scores = _identity_scores(nll)
                            logits = base_logits
                        else:
                            logits = c.ctx.logits(n_out)[:n_score]
                            scores = reducer.compare(base_logits, base_rows, logits, next_tokens)
                        faults.poison_scores(c.cell, scores)
                        if not (np.isfinite(scores.nll).all() and np.isfinite(scores.kld).all()):
                            c.nonfinite = True
                        _append(c.parts, chunk, p_lo, next_tokens, scores, base_rows.nll)
                    except llama_api.LlamaError as exc:
                        if split_on_oom and isinstance(exc, llama_api.OutOfMemory):
                            raise
                        c.failure = failure_outcome(c.cell, started, exc)
                if n_score and not np.isfinite(base_rows.nll).all():
                    raise FloatingPointError("the baseline produced NaN or infinite logits")
            for c, mark in zip(live, marks):
                c.end_chunk(mark)
            chunks_run = chunk + 1
            yield (chunk + 1, n_steps)
            if target is not None and chunk + 1 < n_chunk and precision.quality_target_met(
                    {c.cell.cell_id: c.chunk_kl for c in live if c.failure is None and c.ctx is not None}, target):
                stop_reason = precision.STOP_TARGET
                break

        yield from _generation_agreement(base, live, gen_prompts, head.gen_tokens, started,
                                         split_on_oom, chunks_run, chunks_run + len(gen_prompts))
        finished = time.time()
        fallback = fallback or shared_check()
        alive = 1 + sum(1 for c in compared if c.ctx is not None)
        return [
            c.failure if c.failure else _summarize(c, chunks_run, started, finished, base, fallback, alive,
                                                   stop_reason)
            for c in compared
        ]
    finally:
        for c in compared:
            if c.ctx is not None:
                c.ctx.close()
        base.close()


def _generation_agreement(base, live, gen_prompts, n_gen, started, split_on_oom, done, total):
    """Greedy continuations of the prompts with the baseline, then with every compared context
    (generation.py); the baseline configuration's own cell agrees with itself by definition."""
    if not gen_prompts:
        return
    for c in live:
        c.agreement = generation.Agreement()
    for j, p in enumerate(gen_prompts):
        reference = generation.greedy(base, p.tokens, n_gen)
        for c in live:
            if c.failure is not None:
                continue
            try:
                other = reference if c.ctx is None else generation.greedy(c.ctx, p.tokens, n_gen)
                c.agreement.add(p.depth, reference, other)
            except llama_api.LlamaError as exc:
                if split_on_oom and isinstance(exc, llama_api.OutOfMemory):
                    raise
                c.failure = failure_outcome(c.cell, started, exc)
        yield (done + j + 1, total)


def _identity_scores(nll: np.ndarray):
    from kvsweep.workers.kl_math import TokenScores

    n = len(nll)
    return TokenScores(nll=nll, kld=np.zeros(n), dp=np.zeros(n), same_top=np.ones(n, bool))


def _append(parts, chunk, p_lo, next_tokens, scores, nll_base) -> None:
    n = len(next_tokens)
    for name, values in (
        ("chunk", np.full(n, chunk, np.int32)),
        ("pos", np.arange(p_lo + 1, p_lo + 1 + n, dtype=np.int32)),
        ("token", next_tokens.astype(np.int32)),
        ("nll", scores.nll),
        ("nll_base", nll_base),
        ("kld", scores.kld),
        ("dp", scores.dp),
        ("same_top", scores.same_top),
    ):
        parts.setdefault(name, []).append(np.asarray(values).copy())


def _summarize(c: _Compared, n_chunk, started, finished, base, fallback, unit_contexts,
               stop_reason: str) -> records.CellOutcome:
    cols = {k: np.concatenate(v) for k, v in c.parts.items()}
    nll, nll_base = cols["nll"], cols["nll_base"]
    # bit-identical results of two configurations mean one setting did not take effect
    # (analysis/sql/views.sql matches digests across cells)
    digest = hashlib.sha256(np.ascontiguousarray(nll, np.float64).tobytes()
                            + np.ascontiguousarray(cols["kld"], np.float64).tobytes()).hexdigest()
    ppl, ppl_base = float(np.exp(nll.mean())), float(np.exp(nll_base.mean()))
    flags, status = [], records.OK
    if c.nonfinite:
        flags.append("nonfinite")
        status = records.INVALID
    elif ppl > IMPLAUSIBLE_PPL_RATIO * ppl_base:
        flags.append("implausible-ppl")
    ctx = c.ctx or base
    columns, context_flags = context_columns(ctx, fallback, c.cell)
    flags += context_flags
    if c.ctx is not None:  # the baseline's own fallback or misconfiguration skews every KL figure
        base_flags = context_columns(base, fallback)[1]
        flags += [f"baseline-{f}" for f in base_flags]
    return records.CellOutcome(
        cell_id=c.cell.cell_id,
        status=status,
        started_at=started,
        finished_at=finished,
        error_class="NonFiniteLogits" if c.nonfinite else "",
        error_message="NaN or infinite values in the logits" if c.nonfinite else "",
        flags=flags,
        metrics={
            "n_chunks": n_chunk,
            "stop_reason": stop_reason,
            # the precision reached: the relative standard error of the mean KL over chunks
            # (the baseline configuration's own cell: its KL is 0 in every chunk)
            "kld_rel_se_chunks": (precision.relative_se(c.chunk_kl) if c.ctx is not None else 0.0)
            if n_chunk > 1 else None,
            "n_tokens": len(nll),
            "ppl": ppl,
            "ppl_base": ppl_base,
            "kld_mean": float(cols["kld"].mean()),
            "same_top_p": float(cols["same_top"].mean()),
            "tokens_digest": digest,
            **(c.agreement.metrics() if c.agreement else {}),
        },
        facts={**columns, **probe.run_facts(ctx.model.path), "unit_contexts": unit_contexts},
        tokens=cols,
    )
