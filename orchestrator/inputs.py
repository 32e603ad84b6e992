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
    n_ctx_train: int = 0  # the context the model was trained for (0: unknown, not local)
    loadable: bool = False  # llama.cpp read its metadata and vocabulary here

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
    fill_path: str = ""  # speed.fill = "corpus": the text that fills the cache
    fill_sha256: str = ""
    problems: list[str] = field(default_factory=list)  # each names the file, the key and the fix
    warnings: list[str] = field(default_factory=list)  # runs, but probably not what was meant

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
        if path.exists() and not path.is_file():
            problems.append(f"{src}: [models[{i}].path] {path} is a directory, not a GGUF file -> "
                            "point path at the .gguf file (for a split model, its first part)")
            models.append(ResolvedModel(spec, str(path), "", True))
        elif path.exists():
            bad = _not_gguf(path)
            if bad:
                problems.append(f"{src}: [models[{i}].path] {bad}")
                models.append(ResolvedModel(spec, str(path), "", True))
                continue
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
    if q is not None:
        _read_corpus(matrix, out)
    s = matrix.speed
    if s is not None and s.fill == "corpus":
        if s.corpus is not None:
            out.fill_path, out.fill_sha256 = _check_text(src, "speed.corpus", s.corpus, out.problems)
        elif q is not None:
            out.fill_path, out.fill_sha256 = out.corpus_path, out.corpus_sha256
        else:
            out.problems.append(f"{src}: [speed.fill] \"corpus\" needs a text -> set speed.corpus, "
                                "or [quality].corpus")
    _check_models(matrix, out, count_corpus=check_corpus_length and bool(out.corpus_text))
    return out


def _read_corpus(matrix: Matrix, out: ResolvedInputs) -> None:
    src, q = matrix.source, matrix.quality
    out.corpus_path = str(q.corpus)
    if not q.corpus.exists():
        out.problems.append(f"{src}: [quality.corpus] corpus file missing: {q.corpus} -> fix the path")
        return
    if not q.corpus.is_file():
        out.problems.append(f"{src}: [quality.corpus] {q.corpus} is a directory, not a text file -> fix the path")
        return
    data = q.corpus.read_bytes()
    out.corpus_sha256 = file_sha256(q.corpus)
    try:
        out.corpus_text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.problems.append(f"{src}: [quality.corpus] {q.corpus} is not UTF-8 text ({exc}) -> convert it")


def _check_text(src, key: str, path: Path, problems: list[str]) -> tuple[str, str]:
    """(path, sha256) of a text file the matrix names; a problem when it is not one."""
    if not path.is_file():
        what = "is a directory, not a text file" if path.exists() else "is missing"
        problems.append(f"{src}: [{key}] {path} {what} -> fix the path")
        return str(path), ""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{src}: [{key}] {path} is not UTF-8 text ({exc}) -> convert it")
    return str(path), file_sha256(path)


def _not_gguf(path: Path) -> str:
    """Why a model file is not a GGUF file kvsweep can plan for ('' when it is one)."""
    from kvsweep.orchestrator.memory_plan import read_shape

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        return (f"{path} is not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF') "
                "-> point path at a .gguf model (convert others with llama.cpp's convert_hf_to_gguf.py)")
    try:
        read_shape(str(path))
    except Exception as exc:  # the gguf reader's ValueError, KeyError, IndexError on damage
        return (f"{path} is a damaged or incomplete GGUF file ({type(exc).__name__}: {exc}) -> "
                "copy or download it again and compare its sha256")
    return ""


def _check_models(matrix: Matrix, out: ResolvedInputs, count_corpus: bool) -> None:
    """Load each local model's metadata and vocabulary with llama.cpp (a vocabulary-only load:
    no weights), so a file llama.cpp cannot load is reported before anything runs; count the
    corpus's tokens with it (each model must see 2 x n_ctx, llama-perplexity's rule); note
    depths and contexts past what the model was trained for."""
    from kvsweep.orchestrator.memory_plan import read_shape
    from kvsweep.workers.llama_api import LlamaError, Model

    q = matrix.quality
    for i, m in enumerate(out.models):
        if not m.local or not m.sha256:
            continue  # not on this host (its worker checks it), or already reported
        try:
            vocab = Model(m.path, n_gpu_layers=0, vocab_only=True)
        except LlamaError as exc:
            said = [line.strip() for line in exc.log_tail.splitlines() if line.strip()]
            out.problems.append(f"{matrix.source}: [models[{i}].path] llama.cpp cannot load {m.path}: "
                                f"{said[-1] if said else exc} -> use a GGUF this llama.cpp build supports")
            continue
        try:
            # (a vocabulary-only load does not read the hyperparameters: take the metadata's)
            m.loadable, m.n_ctx_train = True, read_shape(m.path).n_ctx_train
            if count_corpus:
                out.corpus_tokens[m.spec.name] = len(vocab.tokenize_corpus(out.corpus_text))
        finally:
            vocab.close()
        n = out.corpus_tokens.get(m.spec.name)
        if n is not None and n < 2 * max(q.n_ctx):
            out.problems.append(
                f"{matrix.source}: [quality.corpus] {Path(out.corpus_path).name} tokenizes to {n} "
                f"tokens with model {m.spec.name}; n_ctx {max(q.n_ctx)} needs at least "
                f"{2 * max(q.n_ctx)} (2 x n_ctx) -> use a longer corpus or a smaller quality.n_ctx"
            )
        deepest = []
        if matrix.speed is not None:
            s = matrix.speed
            deepest.append(("speed.depths", max(s.depths) + max(s.n_prompt, s.n_gen)))
        if q is not None:
            deepest.append(("quality.n_ctx", max(q.n_ctx)))
        for key, n_tokens in deepest:
            if m.n_ctx_train and n_tokens > m.n_ctx_train:
                out.warnings.append(
                    f"{matrix.source}: [{key}] model {m.spec.name} was trained for {m.n_ctx_train} "
                    f"tokens of context; {n_tokens} goes past it (llama.cpp runs it, but figures "
                    "there say little about the model as it is used)")
