"""`kvsweep`: the command line. Thin: each command parses arguments and calls one module.

Exit codes: 0 done; 1 the sweep ran but some cells are not ok; 2 bad input (matrix, files,
run directory); 3 the run directory is locked by another driver; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loguru import logger

import kvsweep

EXIT_NOT_ALL_OK = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3
EXIT_INTERRUPTED = 130


def _setup_logging(verbose: bool) -> None:
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "INFO",
               format="<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_BAD_INPUT
    from kvsweep.orchestrator.matrix import MatrixError
    from kvsweep.orchestrator.run_dir import RunDirLocked
    from kvsweep.orchestrator.sweep import InputProblems

    try:
        return args.func(args)
    except (MatrixError, InputProblems) as exc:
        print("kvsweep: the matrix cannot run as it is:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FileNotFoundError as exc:
        print(f"kvsweep: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunDirLocked as exc:
        print(f"kvsweep: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except KeyboardInterrupt:
        print("kvsweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvsweep", description=(
        "Sweep llama.cpp K/V cache types: quality (PPL, KL divergence, top-1 agreement) and "
        "speed (pp/tg tokens/s at depth) across a fleet of hosts, into Parquet and reports."))
    p.add_argument("--version", action="version", version=f"kvsweep {kvsweep.__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        c.set_defaults(func=func)
        return c

    run = command("run", "run a sweep from a matrix file (resumes if its run directory exists)", cmd_run)
    run.add_argument("matrix", type=Path, help="the matrix TOML file, e.g. matrices/demo.toml")
    _run_options(run)
    run.add_argument("--run-dir", type=Path, help="where results go (default: runs/<matrix name>)")
    run.add_argument("--dry-run", action="store_true", help="print the plan and the missing files; run nothing")

    resume = command("resume", "run what a run directory is missing (with its frozen matrix)", cmd_resume)
    resume.add_argument("run_dir", type=Path)
    _run_options(resume)

    status = command("status", "where every cell of a run stands (works while it runs)", cmd_status)
    status.add_argument("run_dir", type=Path)

    report = command("report", "write the Markdown report of a run", cmd_report)
    report.add_argument("run_dir", type=Path)

    sql = command("sql", "SQL over a run's results (DuckDB; no query: an interactive shell)", cmd_sql)
    sql.add_argument("run_dir", type=Path)
    sql.add_argument("query", nargs="?", help='e.g. "SELECT config, ppl, kld_mean FROM quality"')

    export = command("export", "speed results in llama-bench's jsonl or sql output (for compare-llama-bench.py)", cmd_export)
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", choices=("jsonl", "sql"), default="jsonl")
    export.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    export.add_argument("--build-commit", help="label the rows with this build_commit instead of the recorded one")

    make = command("make-model", "write a tiny generated GGUF model (what the demo runs)", cmd_make_model)
    make.add_argument("out", type=Path)
    make.add_argument("--arch", default="llama")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--n-vocab", type=int, default=0, help="0: the small built-in vocabulary")
    return p


def _run_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--address", help="join this Ray cluster (HEAD:PORT) instead of an embedded one")
    c.add_argument("--redo", choices=("missing", "failed", "oom"), default="failed",
                   help="what to run again: missing cells only; also failed (default); also oom/skipped")
    c.add_argument("--workers", type=int, default=1, help="worker actors on this host (embedded Ray)")
    c.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    c.add_argument("--no-progress", action="store_true", help="log lines instead of a live display")


def _options(args, run_dir: Path | None):
    from kvsweep.orchestrator.sweep import RunOptions

    return RunOptions(run_dir=run_dir, address=args.address, redo=args.redo, n_workers=args.workers,
                      report=not args.no_report, progress=False if args.no_progress else None)


def _finish(result) -> int:
    from kvsweep import records

    s = result.summary
    print(f"\nresults: {result.run_dir / 'results'}")
    if result.report:
        print(f"report:  {result.report}")
    print(f"cells:   {result.planned} planned, {result.planned - result.to_run} done before, "
          f"{result.to_run} run now: " + (", ".join(f"{n} {k}" for k, n in s.by_status.items()) or "nothing to do"))
    if s.interrupted:
        return EXIT_INTERRUPTED
    not_ok = sum(n for k, n in s.by_status.items() if k not in (records.OK, records.SKIPPED))
    return EXIT_NOT_ALL_OK if not_ok or s.stranded else 0


def cmd_run(args) -> int:
    if args.dry_run:
        return _print_dry_run(args.matrix, args.address)
    from kvsweep.orchestrator.sweep import run_sweep

    return _finish(run_sweep(args.matrix, _options(args, args.run_dir)))


def cmd_resume(args) -> int:
    from kvsweep.orchestrator.matrix import load_matrix
    from kvsweep.orchestrator.run_dir import RunDir
    from kvsweep.orchestrator.sweep import run_sweep

    rd = RunDir(args.run_dir)
    if not rd.exists():
        raise FileNotFoundError(f"{args.run_dir} is not a kvsweep run directory (no manifest.json)")
    source = Path(rd.manifest().get("matrix_source", rd.matrix_file))
    # relative paths in the matrix resolve against where it was written, not the run directory
    matrix_path = source if source.exists() and source.read_bytes() == rd.matrix_file.read_bytes() else rd.matrix_file
    matrix = load_matrix(matrix_path)
    return _finish(run_sweep(matrix_path, _options(args, args.run_dir), matrix=matrix))


def _print_dry_run(matrix_path: Path, address: str | None) -> int:
    from kvsweep.orchestrator.plan import summarize
    from kvsweep.orchestrator.sweep import dry_run, units_of

    matrix, cells, classes, problems = dry_run(matrix_path, address)
    print(f"matrix {matrix.source} (sweep '{matrix.name}')")
    print(f"configurations: {', '.join(k if k == v else f'{k}/{v}' for k, v in matrix.configs)}")
    print(f"host classes:   {', '.join(classes)}" + ("" if address else " (this host; --address to plan for a fleet)"))
    print(f"{len(cells)} cells in {len(units_of(cells, matrix))} work units:")
    width = max((len(m) for m, _, _ in summarize(cells)), default=5)
    for model, kind, n in summarize(cells):
        print(f"  {model:<{width}}  {kind:<8} {n:>6}")
    if problems:
        print(f"\ncannot run yet: {len(problems)} problem(s):")
        for problem in problems:
            print(f"  - {problem}")
    return 0


def cmd_status(args) -> int:
    from kvsweep.analysis.status import print_status

    print_status(args.run_dir)
    return 0


def cmd_report(args) -> int:
    from kvsweep.analysis.report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_sql(args) -> int:
    from kvsweep.analysis.shell import run_query, shell

    if args.query:
        run_query(args.run_dir, args.query)
    else:
        shell(args.run_dir)
    return 0


def cmd_export(args) -> int:
    from kvsweep.analysis.export import export

    text = export(args.run_dir, args.format, args.build_commit)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_make_model(args) -> int:
    from kvsweep.workers.generated_models import ModelRecipe, generate_model

    path = generate_model(ModelRecipe(arch=args.arch, seed=args.seed, n_vocab=args.n_vocab), args.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
