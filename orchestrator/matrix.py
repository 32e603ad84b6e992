"""A sweep as data: the TOML matrix file, parsed into typed settings and validated up front.

Every problem is reported before anything runs, all at once, each naming the file, the key and
the fix. This module checks what can be checked from the file alone; inputs.py checks what
needs the files it names (the model exists, the corpus is long enough).
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvsweep import cache_types, defaults
from kvsweep.precision import QualityPrecision, SpeedPrecision
from kvsweep.fault_plan import validate as validate_faults
from kvsweep.model_recipe import ARCHITECTURES, ModelRecipe

FLASH_ATTN_MODES = ("on", "off", "auto")

# Upper bounds, so that a typo (an extra zero, 99999999999999999999) is an error here rather
# than an overflow in a Parquet column or a sweep that never ends. Generous: the seeds' sweeps
# reach 512K depth; llama.cpp contexts of 16M tokens exist nowhere yet.
MAX_TOKENS = 1 << 24  # n_ctx, depths
MAX_BATCH = 1 << 20  # n_batch, n_ubatch, n_prompt, n_gen
MAX_INT = 2**31 - 1  # anything else that is stored in an int32 column
LIMITS = {
    "repetitions": 1000, "max_chunks": 1_000_000, "max_contexts": 64, "n_ctx": MAX_TOKENS,
    "depths": MAX_TOKENS, "n_batch": MAX_BATCH, "n_ubatch": MAX_BATCH, "n_prompt": MAX_BATCH,
    "n_gen": MAX_BATCH, "n_gpu_layers": 100_000, "n_threads": 4096, "oom_retries": 100,
    "crash_retries": 100,
}
MAX_SECONDS = 30 * 24 * 3600.0  # cell_timeout_s, oom_backoff_s
QUALITY_PLACEMENTS = ("any", "every-backend")
SCORES = ("second-half", "all")
FILLS = ("random", "corpus")


class MatrixError(ValueError):
    """One or more problems in a matrix file; str() lists them all."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path | None  # a GGUF file
    sha256: str  # optional for files on this host; required for files that are not
    recipe: ModelRecipe | None  # a model kvsweep generates itself


@dataclass(frozen=True)
class QualitySpec:
    corpus: Path
    n_ctx: tuple[int, ...]
    max_chunks: int = 0  # 0: every chunk
    baseline: str = "f16"
    n_batch: int = 512
    n_ubatch: int = 512
    max_contexts: int = defaults.MAX_CONTEXTS  # compared contexts alive next to one baseline pass
    score: str = ""  # "" = second half of each chunk (llama-perplexity); "all" = every position
    generation: GenerationSpec | None = None
    precision: QualityPrecision | None = None  # None: every chunk (as llama-perplexity)


@dataclass(frozen=True)
class GenerationSpec:
    """Generation agreement: greedy continuations of corpus prompts, compared with the baseline's."""

    tokens: int = 32  # tokens generated after each prompt
    depths: tuple[int, ...] = (64,)  # prompt lengths (the cache's depth when generation starts)
    prompts: int = 4  # prompts per depth, each from its own chunk of the corpus


@dataclass(frozen=True)
class SpeedSpec:
    depths: tuple[int, ...] = (0,)
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 5
    n_batch: int = 2048
    n_ubatch: int = 512
    fill: str = "random"  # what fills the cache to each depth: "random" tokens or "corpus" text
    corpus: Path | None = None  # the text for fill = "corpus" (default: [quality].corpus)
    precision: SpeedPrecision | None = None  # None: every repetition, as llama-bench
    ceiling: CeilingSpec | None = None  # None: the ceiling is the deepest depth of the grid that fit


@dataclass(frozen=True)
class CeilingSpec:
    """`[speed] ceiling`: bisect the context ceiling after the depth grid (workers/ceiling.py)."""

    # stop when the interval is at most this many tokens ("256") or this share of the first
    # interval ("1/16")
    resolution: str = "1/16"


@dataclass(frozen=True)
class RuntimeSpec:
    flash_attn: str = "on"
    n_gpu_layers: int = 999
    n_threads: int = 0
    env: tuple[tuple[str, str], ...] = ()
    cell_timeout_s: float = 3600.0


@dataclass(frozen=True)
class RetrySpec:
    oom_retries: int = defaults.OOM_RETRIES
    oom_backoff_s: float = defaults.OOM_BACKOFF_S
    crash_retries: int = defaults.CRASH_RETRIES
    skip_deeper_after_oom: bool = True
    replace_on_oom: bool = True  # try a host with more memory before recording oom


@dataclass(frozen=True)
class PlacementSpec:
    speed_host_classes: tuple[str, ...] = ()  # empty: every host class in the fleet
    quality_on: str = "any"
    try_predicted_oom: bool = False


@dataclass(frozen=True)
class Matrix:
    source: Path
    name: str
    models: tuple[ModelSpec, ...]
    configs: tuple[tuple[str, str], ...]  # (type_k, type_v), in the order the file lists them
    runtime: RuntimeSpec
    quality: QualitySpec | None
    speed: SpeedSpec | None
    retry: RetrySpec = RetrySpec()
    placement: PlacementSpec = PlacementSpec()
    faults: tuple[dict, ...] = field(default=())

    @property
    def base_dir(self) -> Path:
        return self.source.parent


# -- a small reader that records problems instead of raising at the first one -------------


class _Reader:
    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        self.type_keys: dict[str, str] = {}  # cache type name -> the key that first named it

    def problem(self, key: str, message: str, fix: str = "") -> None:
        text = f"{self.path}: [{key}] {message}"
        if fix:
            text += f" -> {fix}"
        self.problems.append(text)

    def table(self, data: dict, name: str, known: dict[str, Any]) -> dict:
        """Values of table `name` with defaults filled in; unknown keys are problems."""
        out = {}
        for key, value in data.items():
            if key not in known:
                near = difflib.get_close_matches(key, list(known), n=1)
                hint = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(known)}"
                self.problem(f"{name}.{key}" if name else key, "unknown key", hint)
                continue
            out[key] = value
        for key, default in known.items():
            out.setdefault(key, default)
        return out

    def typed(self, value, key: str, kind, what: str):
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            self.problem(key, f"must be {what}, got {value!r}")
            return None
        return value

    def positive(self, value, key: str, allow_zero: bool = False):
        v = self.typed(value, key, int, "an integer")
        if v is not None and (v < 0 or (v == 0 and not allow_zero)):
            self.problem(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {v}")
            return None
        limit = LIMITS.get(key.rsplit(".", 1)[-1], MAX_INT)
        if v is not None and v > limit:
            self.problem(key, f"must be at most {limit:,}, got {v:,}", "a typo? (see docs/matrix.md)")
            return None
        return v

    def seconds(self, value, key: str, allow_zero: bool = False):
        v = self.typed(value, key, float, "a number of seconds")
        if v is not None and (not 0 <= v <= MAX_SECONDS or (v == 0 and not allow_zero)):
            self.problem(key, f"must be {'>= 0' if allow_zero else '> 0'} and at most {MAX_SECONDS:.0f} "
                         f"(30 days), got {value!r}")
            return None
        return v

    def int_list(self, value, key: str, example: str, allow_zero: bool = False) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            self.problem(key, "must be a non-empty list of integers", f"e.g. {example}")
            return ()
        items = [self.positive(v, key, allow_zero) for v in value]
        if any(v is None for v in items):
            return ()
        dupes = sorted({v for v in items if items.count(v) > 1})
        if dupes:
            self.problem(key, f"lists {dupes} more than once", "remove the duplicates")
        return tuple(dict.fromkeys(items))

    def cache_type(self, value, key: str, allowed=None) -> str | None:
        """A cache type's name. Which names exist depends on the builds of the fleet's hosts
        (a fork adds its own): check_cache_types() holds them against the fleet; here only
        what no build can have is refused."""
        if allowed is not None:
            if value not in allowed:
                self.problem(key, f"not allowed here: {value!r}", f"valid: {', '.join(allowed)}")
                return None
            return value
        if not isinstance(value, str) or not cache_types.NAME.match(value):
            self.problem(key, f"not a cache type name: {value!r}",
                         f"e.g. {', '.join(cache_types.MAINLINE_TYPES[:4])} (lower case, as llama.cpp's -ctk/-ctv take them)")
            return None
        self.type_keys.setdefault(value, key)
        return value

    def type_list(self, value, key: str) -> list[str]:
        if not isinstance(value, list) or not value:
            self.problem(key, "must be a non-empty list of cache types", f"e.g. {key.split('.')[-1]} = [\"f16\", \"q8_0\"]")
            return []
        names = [self.cache_type(v, key) for v in value]
        dupes = sorted({v for v in value if isinstance(v, str) and value.count(v) > 1})
        if dupes:
            self.problem(key, f"lists {', '.join(dupes)} more than once", "remove the duplicates")
        return [n for n in names if n]


# -- the sections ------------------------------------------------------------------------

_TOP = {
    "name": None,
    "models": None,
    "cache": None,
    "quality": None,
    "speed": None,
    "runtime": {},
    "retry": {},
    "placement": {},
    "testing": {},
}


@dataclass(frozen=True)
class BuildTypes:
    """The K/V cache types one build of the fleet runs, and where (for messages)."""

    where: str  # e.g. "cpu-xeon (mainline 0c1e570)"
    types: frozenset[str]


def load_matrix(path: str | Path, builds: list[BuildTypes] | None = None) -> Matrix:
    """Parse and validate a matrix file; raises MatrixError listing every problem.

    `builds`: the cache types of the fleet's builds; when given, every type the matrix names
    must be in one of them (without it, names are checked when the fleet is known)."""
    path = Path(path)
    problems: list[str] = []
    if not path.exists():
        raise MatrixError([f"{path}: no such matrix file -> check the path (see matrices/ for examples)"])
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError([f"{path}: not valid TOML: {exc}"]) from None
    r = _Reader(path.resolve(), problems)
    top = r.table(data, "", _TOP)

    name = top["name"]
    if name is None:
        name = path.stem
    elif not isinstance(name, str) or not name.strip() or "/" in name:
        r.problem("name", f"must be a non-empty string without '/', got {name!r}")
        name = path.stem

    runtime = _runtime(r, top["runtime"])
    models = _models(r, top["models"], path.resolve().parent)
    configs = _configs(r, top["cache"], runtime)
    if builds:
        for name, message, fix in type_problems(configs, builds):
            r.problem(r.type_keys.get(name, "cache"), message, fix)
    quality = _quality(r, top["quality"], path.resolve().parent) if top["quality"] is not None else None
    speed = _speed(r, top["speed"], path.resolve().parent) if top["speed"] is not None else None
    if top["quality"] is None and top["speed"] is None:
        r.problem("quality/speed", "the matrix measures nothing", "add a [quality] or a [speed] table (or both)")
    retry = _retry(r, top["retry"])
    placement = _placement(r, top["placement"])
    testing = r.table(_as_table(r, top["testing"], "testing"), "testing", {"faults": []})
    faults = testing["faults"]
    if not isinstance(faults, list) or not all(isinstance(f, dict) for f in faults):
        r.problem("testing.faults", "must be a list of tables", "see docs/failures.md")
        faults = []
    for msg in validate_faults(faults):
        r.problem("testing." + msg.split(" ", 1)[0], msg.split(" ", 1)[1])

    if problems:
        raise MatrixError(problems)
    return Matrix(
        source=path.resolve(),
        name=name,
        models=tuple(models),
        configs=tuple(configs),
        runtime=runtime,
        quality=quality,
        speed=speed,
        retry=retry,
        placement=placement,
        faults=tuple(faults),
    )


def type_problems(configs, builds: list[BuildTypes]) -> list[tuple[str, str, str]]:
    """(type, message, fix) for each cache type of `configs` that no build of the fleet has."""
    have = set().union(*(b.types for b in builds))
    missing = list(dict.fromkeys(t for k, v in configs for t in (k, v) if t not in have))
    fleet = "; ".join(f"{b.where}: {', '.join(sorted(b.types))}" for b in builds)
    out = []
    for name in missing:
        known = cache_types.lookup(name)
        if known is not None and known.origin != cache_types.MAINLINE:
            fix = (f"{name} comes from the {known.origin} fork of llama.cpp: build a worker on it with "
                   "scripts/build_worker.py and join it to the fleet (docs/forks.md)")
        else:
            fix = "check the spelling, or join a host whose llama.cpp build has it (docs/forks.md)"
        out.append((name, f"no build in the fleet has the cache type {name!r} (the fleet's builds: {fleet})", fix))
    return out


def _as_table(r: _Reader, value, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        r.problem(key, "must be a table", f"write it as [{key}]")
        return {}
    return value


def _models(r: _Reader, value, base: Path) -> list[ModelSpec]:
    if value is None:
        r.problem("models", "no models", 'add [[models]] with path = "/path/to/model.gguf" (or generate = {arch = "llama"})')
        return []
    if not isinstance(value, list) or not value:
        r.problem("models", "must be a non-empty array of tables", "write each model as [[models]]")
        return []
    out, names = [], []
    for i, entry in enumerate(value):
        key = f"models[{i}]"
        if not isinstance(entry, dict):
            r.problem(key, "must be a table", "write each model as [[models]]")
            continue
        entry = r.table(entry, key, {"name": None, "path": None, "sha256": "", "generate": None})
        path, recipe = entry["path"], None
        if (path is None) == (entry["generate"] is None):
            r.problem(key, "needs exactly one of 'path' (a GGUF file) or 'generate' (a test model)",
                      'e.g. path = "/models/qwen.gguf"')
            continue
        if path is not None:
            if not isinstance(path, str) or not path:
                r.problem(f"{key}.path", f"must be a file path, got {path!r}")
                continue
            path = Path(path).expanduser()
            path = path if path.is_absolute() else base / path
        else:
            recipe = _recipe(r, entry["generate"], f"{key}.generate")
            if recipe is None:
                continue
        sha = entry["sha256"]
        if sha and (not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
            r.problem(f"{key}.sha256", "must be 64 hex digits", "run: sha256sum MODEL.gguf")
            sha = ""
        name = entry["name"] or (path.stem if path else f"tiny-{recipe.arch}")
        if name in names:
            r.problem(f"{key}.name", f"model name {name!r} is used twice", "give each model its own name")
        names.append(name)
        out.append(ModelSpec(name=name, path=path, sha256=(sha or "").lower(), recipe=recipe))
    return out


def _recipe(r: _Reader, value, key: str) -> ModelRecipe | None:
    if not isinstance(value, dict):
        r.problem(key, "must be a table", 'e.g. generate = { arch = "llama", seed = 0 }')
        return None
    known = {f: getattr(ModelRecipe(), f) for f in ModelRecipe.__dataclass_fields__}
    values = r.table(value, key, known)
    if values["arch"] not in ARCHITECTURES:
        r.problem(f"{key}.arch", f"unknown architecture {values['arch']!r}", f"one of: {', '.join(ARCHITECTURES)}")
        return None
    for k, v in values.items():
        if k != "arch" and r.positive(v, f"{key}.{k}", allow_zero=k in ("seed", "n_vocab")) is None:
            return None
    if values["n_embd"] % values["n_head"] or values["n_head"] % values["n_head_kv"]:
        r.problem(key, "n_embd must divide by n_head, and n_head by n_head_kv")
        return None
    return ModelRecipe(**values)


def _configs(r: _Reader, value, runtime: RuntimeSpec) -> list[tuple[str, str]]:
    table = _as_table(r, value, "cache")
    if not table:
        r.problem("cache", "no cache types", 'add [cache] with symmetric = ["f16", "q8_0"] (or k/v lists, or pairs)')
        return []
    t = r.table(table, "cache", {"k": None, "v": None, "symmetric": None, "pairs": None})
    configs: list[tuple[str, str]] = []
    if t["symmetric"] is not None:
        configs += [(n, n) for n in r.type_list(t["symmetric"], "cache.symmetric")]
    if (t["k"] is None) != (t["v"] is None):
        r.problem("cache.k" if t["k"] is None else "cache.v", "k and v lists go together (their product is swept)",
                  "give both, or use 'symmetric' / 'pairs'")
    elif t["k"] is not None:
        ks, vs = r.type_list(t["k"], "cache.k"), r.type_list(t["v"], "cache.v")
        configs += [(k, v) for k in ks for v in vs]
    if t["pairs"] is not None:
        pairs = t["pairs"]
        if not isinstance(pairs, list) or not pairs:
            r.problem("cache.pairs", "must be a non-empty list of [K, V] pairs", 'e.g. pairs = [["q8_0", "q4_0"]]')
        else:
            seen = []
            for i, pair in enumerate(pairs):
                if not (isinstance(pair, list) and len(pair) == 2):
                    r.problem(f"cache.pairs[{i}]", f"must be [K, V], got {pair!r}")
                    continue
                k = r.cache_type(pair[0], f"cache.pairs[{i}]")
                v = r.cache_type(pair[1], f"cache.pairs[{i}]")
                if k and v:
                    if (k, v) in seen:
                        r.problem(f"cache.pairs[{i}]", f"[{k}, {v}] is listed twice", "remove the duplicate")
                    seen.append((k, v))
                    configs.append((k, v))
    if not configs and not r.problems:
        r.problem("cache", "no cache types", "give symmetric, k and v, or pairs")
    configs = list(dict.fromkeys(configs))  # the same pair from two forms is swept once
    if runtime.flash_attn == "off":
        for k, v in configs:
            if cache_types.is_quantized(v):
                r.problem("runtime.flash_attn", f"V cache {v} is quantized, and llama.cpp needs flash "
                          "attention for a quantized V cache", 'set flash_attn = "on", or drop that V type')
                break
    return configs


def _quality(r: _Reader, value, base: Path) -> QualitySpec | None:
    t = r.table(_as_table(r, value, "quality"), "quality", {
        "corpus": None, "n_ctx": [512], "max_chunks": 0, "baseline": "f16", "n_batch": 512,
        "n_ubatch": 512, "max_contexts": defaults.MAX_CONTEXTS, "score": "second-half", "generation": None,
        "precision": None})
    corpus = t["corpus"]
    if not isinstance(corpus, str) or not corpus:
        r.problem("quality.corpus", "needs a text file to measure perplexity on",
                  'e.g. corpus = "/data/wikitext-2-raw/wiki.test.raw"')
        return None
    corpus_path = Path(corpus).expanduser()
    corpus_path = corpus_path if corpus_path.is_absolute() else base / corpus_path
    n_ctx = r.int_list(t["n_ctx"], "quality.n_ctx", "n_ctx = [4096, 16384]")
    for n in n_ctx:
        if n < 8 or n % 2:
            r.problem("quality.n_ctx", f"{n} is too small or odd", "use an even context of at least 8 tokens")
    baseline = r.cache_type(t["baseline"], "quality.baseline", cache_types.BASELINE_TYPES)
    values = {k: r.positive(t[k], f"quality.{k}", allow_zero=k == "max_chunks")
              for k in ("max_chunks", "n_batch", "n_ubatch", "max_contexts")}
    if t["score"] not in SCORES:
        r.problem("quality.score", f"must be one of {', '.join(SCORES)}, got {t['score']!r}",
                  '"all" scores every position of a chunk, for quality by depth (docs/measurement.md)')
    generation = _generation(r, t["generation"], n_ctx) if t["generation"] is not None else None
    target = _quality_precision(r, t["precision"], values["max_chunks"]) if t["precision"] is not None else None
    if None in values.values() or not n_ctx or not baseline:
        return None
    return QualitySpec(corpus=corpus_path, n_ctx=n_ctx, baseline=baseline,
                       score="all" if t["score"] == "all" else "", generation=generation,
                       precision=target, **values)


def _share(r: _Reader, value, key: str, what: str, upper: float = 1.0):
    """A number in (0, upper), e.g. a relative standard error or a confidence."""
    v = r.typed(value, key, float, what)
    if v is not None and not 0 < v < upper:
        r.problem(key, f"must be between 0 and {upper:g} (exclusive), got {value!r}", f"e.g. {key.split('.')[-1]} = 0.05")
        return None
    return v


def _quality_precision(r: _Reader, value, max_chunks: int | None) -> QualityPrecision | None:
    d = QualityPrecision()
    key = "quality.precision"
    t = r.table(_as_table(r, value, key), key, {"kl_rel_se": None, "rank_confidence": None,
                                                "min_chunks": d.min_chunks})
    if t["kl_rel_se"] is None and t["rank_confidence"] is None:
        r.problem(key, "sets no target", "set kl_rel_se = 0.05 (KL known to 5%) and/or "
                  "rank_confidence = 0.95 (the caches' order by KL known at 95%); docs/measurement.md")
        return None
    rel = _share(r, t["kl_rel_se"], f"{key}.kl_rel_se", "a relative standard error, e.g. 0.05") \
        if t["kl_rel_se"] is not None else 0.0
    conf = _share(r, t["rank_confidence"], f"{key}.rank_confidence", "a confidence, e.g. 0.95") \
        if t["rank_confidence"] is not None else 0.0
    if conf and conf <= 0.5:
        r.problem(f"{key}.rank_confidence", f"must be above 0.5, got {conf}", "e.g. rank_confidence = 0.95")
        return None
    min_chunks = r.positive(t["min_chunks"], f"{key}.min_chunks")
    if min_chunks is not None and min_chunks < 2:
        r.problem(f"{key}.min_chunks", f"must be at least 2 (a spread needs two chunks), got {min_chunks}")
        return None
    if min_chunks is not None and max_chunks and min_chunks > max_chunks:
        r.problem(f"{key}.min_chunks", f"{min_chunks} is more than quality.max_chunks = {max_chunks}",
                  "lower min_chunks or raise max_chunks")
        return None
    if None in (rel, conf, min_chunks):
        return None
    return QualityPrecision(kl_rel_se=rel, rank_confidence=conf, min_chunks=min_chunks)


def _speed_precision(r: _Reader, value, repetitions: int | None) -> SpeedPrecision | None:
    key = "speed.precision"
    t = r.table(_as_table(r, value, key), key, {"rel_se": None, "min_repetitions": 3})
    if t["rel_se"] is None:
        r.problem(f"{key}.rel_se", "is needed: the relative standard error of t/s to stop at",
                  "e.g. precision = { rel_se = 0.01 } (repetitions is then the most)")
        return None
    rel = _share(r, t["rel_se"], f"{key}.rel_se", "a relative standard error, e.g. 0.01")
    least = r.positive(t["min_repetitions"], f"{key}.min_repetitions")
    if least is not None and least < 3:
        r.problem(f"{key}.min_repetitions", f"must be at least 3, got {least}")
        return None
    if least is not None and repetitions is not None and least > repetitions:
        r.problem(f"{key}.min_repetitions", f"{least} is more than speed.repetitions = {repetitions} "
                  "(the most repetitions a cell runs)", "raise repetitions, e.g. repetitions = 20")
        return None
    if rel is None or least is None:
        return None
    return SpeedPrecision(rel_se=rel, min_repetitions=least)


def _ceiling(r: _Reader, value) -> CeilingSpec | None:
    key = "speed.ceiling"
    t = r.table(_as_table(r, value, key), key, {"resolution": CeilingSpec.resolution})
    res = t["resolution"]
    fix = 'resolution = 256 (tokens) or resolution = "1/16" (of the first interval)'
    if isinstance(res, int) and not isinstance(res, bool):
        if not 1 <= res <= MAX_TOKENS:
            r.problem(f"{key}.resolution", f"must be 1 to {MAX_TOKENS:,} tokens, got {res}", fix)
            return None
        return CeilingSpec(resolution=str(res))
    if isinstance(res, str):
        parts = res.split("/")
        if len(parts) == 2 and parts[0].strip() == "1" and parts[1].strip().isdigit() and int(parts[1]) >= 2:
            return CeilingSpec(resolution=f"1/{int(parts[1])}")
    r.problem(f"{key}.resolution", f"must be a token count or a share like \"1/16\", got {res!r}", fix)
    return None


def _generation(r: _Reader, value, n_ctx: tuple[int, ...]) -> GenerationSpec | None:
    d = GenerationSpec()
    t = r.table(_as_table(r, value, "quality.generation"), "quality.generation",
                {"tokens": d.tokens, "depths": list(d.depths), "prompts": d.prompts})
    tokens = r.positive(t["tokens"], "quality.generation.tokens")
    prompts = r.positive(t["prompts"], "quality.generation.prompts")
    depths = r.int_list(t["depths"], "quality.generation.depths", "depths = [64, 1024]")
    if tokens is None or prompts is None or not depths:
        return None
    for n in n_ctx:
        too_deep = [dp for dp in depths if dp + tokens > n]
        if too_deep:
            r.problem("quality.generation.depths", f"{too_deep} + {tokens} tokens do not fit n_ctx {n}",
                      "use depths of at most n_ctx - tokens")
            return None
    return GenerationSpec(tokens=tokens, depths=depths, prompts=prompts)


def _speed(r: _Reader, value, base: Path) -> SpeedSpec | None:
    d = SpeedSpec()
    t = r.table(_as_table(r, value, "speed"), "speed", {
        "depths": list(d.depths), "n_prompt": d.n_prompt, "n_gen": d.n_gen,
        "repetitions": d.repetitions, "n_batch": d.n_batch, "n_ubatch": d.n_ubatch,
        "fill": d.fill, "corpus": None, "precision": None, "ceiling": None})
    depths = r.int_list(t["depths"], "speed.depths", "depths = [0, 8192, 65536]", allow_zero=True)
    values = {k: r.positive(t[k], f"speed.{k}", allow_zero=k in ("n_prompt", "n_gen"))
              for k in ("n_prompt", "n_gen", "repetitions", "n_batch", "n_ubatch")}
    target = _speed_precision(r, t["precision"], values["repetitions"]) if t["precision"] is not None else None
    ceiling = _ceiling(r, t["ceiling"]) if t["ceiling"] is not None else None
    if (t["precision"] is not None and target is None) or (t["ceiling"] is not None and ceiling is None):
        return None
    if None in values.values() or not depths:
        return None
    if values["n_prompt"] == 0 and values["n_gen"] == 0:
        r.problem("speed", "n_prompt and n_gen are both 0: nothing to time", "set n_prompt = 512, n_gen = 128")
        return None
    if t["fill"] not in FILLS:
        r.problem("speed.fill", f"must be one of {', '.join(FILLS)}, got {t['fill']!r}",
                  '"random" as llama-bench; "corpus" fills the cache with the corpus\'s text')
        return None
    corpus = None
    if t["corpus"] is not None:
        if not isinstance(t["corpus"], str) or not t["corpus"]:
            r.problem("speed.corpus", "must be a text file's path", 'e.g. corpus = "corpora/demo.txt"')
            return None
        corpus = Path(t["corpus"]).expanduser()
        corpus = corpus if corpus.is_absolute() else base / corpus
    return SpeedSpec(depths=depths, fill=t["fill"], corpus=corpus, precision=target, ceiling=ceiling, **values)


def _runtime(r: _Reader, value) -> RuntimeSpec:
    d = RuntimeSpec()
    t = r.table(_as_table(r, value, "runtime"), "runtime", {
        "flash_attn": d.flash_attn, "n_gpu_layers": d.n_gpu_layers, "n_threads": d.n_threads,
        "env": {}, "cell_timeout_s": d.cell_timeout_s})
    fa = t["flash_attn"]
    if fa not in FLASH_ATTN_MODES:
        r.problem("runtime.flash_attn", f"must be one of {', '.join(FLASH_ATTN_MODES)}, got {fa!r}")
        fa = d.flash_attn
    env = t["env"]
    if not isinstance(env, dict) or not all(isinstance(v, (str, int)) for v in env.values()):
        r.problem("runtime.env", "must be a table of environment variables", 'e.g. env = { LLAMA_ATTN_ROT_DISABLE = "1" }')
        env = {}
    timeout = r.seconds(t["cell_timeout_s"], "runtime.cell_timeout_s")
    return RuntimeSpec(
        flash_attn=fa,
        n_gpu_layers=r.positive(t["n_gpu_layers"], "runtime.n_gpu_layers", allow_zero=True) or 0,
        n_threads=r.positive(t["n_threads"], "runtime.n_threads", allow_zero=True) or 0,
        env=tuple(sorted((str(k), str(v)) for k, v in env.items())),
        cell_timeout_s=timeout or d.cell_timeout_s,
    )


def _retry(r: _Reader, value) -> RetrySpec:
    d = RetrySpec()
    t = r.table(_as_table(r, value, "retry"), "retry", {
        "oom_retries": d.oom_retries, "oom_backoff_s": d.oom_backoff_s, "crash_retries": d.crash_retries,
        "skip_deeper_after_oom": d.skip_deeper_after_oom, "replace_on_oom": d.replace_on_oom})
    out = {}
    for k in ("oom_retries", "crash_retries"):
        v = r.positive(t[k], f"retry.{k}", allow_zero=True)
        out[k] = getattr(d, k) if v is None else v
    backoff = r.seconds(t["oom_backoff_s"], "retry.oom_backoff_s", allow_zero=True)
    out["oom_backoff_s"] = d.oom_backoff_s if backoff is None else backoff
    for k in ("skip_deeper_after_oom", "replace_on_oom"):
        v = r.typed(t[k], f"retry.{k}", bool, "true or false")
        out[k] = getattr(d, k) if v is None else v
    return RetrySpec(**out)


def _placement(r: _Reader, value) -> PlacementSpec:
    t = r.table(_as_table(r, value, "placement"), "placement", {
        "speed_host_classes": [], "quality_on": "any", "try_predicted_oom": False})
    classes = t["speed_host_classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        r.problem("placement.speed_host_classes", "must be a list of host class names", "[] means every class")
        classes = []
    if t["quality_on"] not in QUALITY_PLACEMENTS:
        r.problem("placement.quality_on", f"must be one of {', '.join(QUALITY_PLACEMENTS)}")
    tp = r.typed(t["try_predicted_oom"], "placement.try_predicted_oom", bool, "true or false")
    return PlacementSpec(
        speed_host_classes=tuple(classes),
        quality_on=t["quality_on"] if t["quality_on"] in QUALITY_PLACEMENTS else "any",
        try_predicted_oom=bool(tp),
    )
