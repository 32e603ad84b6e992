"""The files a matrix names, checked and fingerprinted before anything runs.

Models: a generated test model is made here (and by any worker that lacks it); a GGUF file
on this host is hashed (sha256, cached by size and mtime); a file that is only on the worker
hosts needs its sha256 in the matrix. Corpora are read here and shipped to the workers through
Ray's object store, so they need not exist on every host; each must hold at least 2 x n_ctx
tokens for every model (llama-perplexity's rule), checked with a vocabulary-only load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kvsweep.hashing import file_sha256
from kvsweep.orchestrator.matrix import Matrix, ModelSpec
from kvsweep.workers.generated_models import cached_model


@dataclass
class ResolvedModel:
    spec: ModelSpec
    path: str
    sha256: str  # "" when unknown (file missing and no sha256 given)
    local: bool  # the file is on this host

    @property
    def recipe_json(self) -> str:
        return self.spec.recipe.to_json() if self.spec.recipe else ""


@dataclass
class ResolvedInputs:
    models: list[ResolvedModel]
    corpus_path: str = ""
    corpus_sha256: str = ""
    corpus_text: str = ""
    corpus_tokens: dict[str, int] = field(default_factory=dict)  # model name -> tokens
    problems: list[str] = field(default_factory=list)  # each names the file, the key and the fix

    @property
    def missing_files(self) -> list[str]:
        return [p for p in self.problems if "missing" in p]


def resolve_inputs(matrix: Matrix, check_corpus_length: bool = True) -> ResolvedInputs:
    src = matrix.source
    models = []
    problems = []
    for i, spec in enumerate(matrix.models):
        if spec.recipe is not None:
            path = cached_model(spec.recipe)
            models.append(ResolvedModel(spec, str(path), file_sha256(path), True))
            continue
        path = spec.path
        if path.exists():
            sha = file_sha256(path)
            if spec.sha256 and sha != spec.sha256:
                problems.append(
                    f"{src}: [models[{i}].sha256] {path} has sha256 {sha}, the matrix says "
                    f"{spec.sha256} -> fix the sha256 or the file"
                )
            models.append(ResolvedModel(spec, str(path), sha, True))
        elif spec.sha256:
            models.append(ResolvedModel(spec, str(path), spec.sha256, False))
        else:
            problems.append(
                f"{src}: [models[{i}].path] model file missing: {path} -> fix the path, or give "
                "sha256 when the file is only on the worker hosts"
            )
            models.append(ResolvedModel(spec, str(path), "", False))

    out = ResolvedInputs(models=models, problems=problems)
    q = matrix.quality
    if q is None:
        return out
    out.corpus_path = str(q.corpus)
    if not q.corpus.exists():
        problems.append(f"{src}: [quality.corpus] corpus file missing: {q.corpus} -> fix the path")
        return out
    data = q.corpus.read_bytes()
    out.corpus_sha256 = file_sha256(q.corpus)
    try:
        out.corpus_text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{src}: [quality.corpus] {q.corpus} is not UTF-8 text ({exc}) -> convert it")
        return out
    if check_corpus_length:
        _check_corpus_length(matrix, out)
    return out


def _check_corpus_length(matrix: Matrix, out: ResolvedInputs) -> None:
    from kvsweep.workers.llama_api import LlamaError, Model

    q = matrix.quality
    need = 2 * max(q.n_ctx)
    for m in out.models:
        if not m.local:
            continue  # the worker checks it and records a clear error
        try:
            vocab = Model(m.path, n_gpu_layers=0, vocab_only=True)
        except LlamaError as exc:
            out.problems.append(f"{matrix.source}: [models] llama.cpp cannot read {m.path}: {exc}")
            continue
        try:
            n = len(vocab.tokenize_corpus(out.corpus_text))
        finally:
            vocab.close()
        out.corpus_tokens[m.spec.name] = n
        if n < need:
            out.problems.append(
                f"{matrix.source}: [quality.corpus] {Path(out.corpus_path).name} tokenizes to {n} "
                f"tokens with model {m.spec.name}; n_ctx {max(q.n_ctx)} needs at least {need} "
                "(2 x n_ctx) -> use a longer corpus or a smaller quality.n_ctx"
            )
