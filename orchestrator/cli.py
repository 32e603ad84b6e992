"""`kvsweep`: the command line. Thin: each command parses arguments and calls one module.

Exit codes: 0 done; 1 the sweep ran but some cells are not ok; 2 bad input (matrix, files,
run directory, query) or a disk that is full or not writable; 3 the run directory is locked by
another driver; 70 a bug in kvsweep; 130 interrupted. Errors are one or a few lines; --debug
(or KVSWEEP_DEBUG=1) adds the traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from loguru import logger

import kvsweep

EXIT_NOT_ALL_OK = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70  # a bug in kvsweep (EX_SOFTWARE): one line, --debug for the traceback


def _setup_logging(verbose: bool) -> None:
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "INFO",
               format="<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}")


def _debug(args) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("KVSWEEP_DEBUG", "") not in ("", "0")


def _say(message: str) -> None:
    print(f"kvsweep: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return _run_command(args)
    except Exception:
        if _debug(args):
            raise
        exc = sys.exc_info()[1]
        _say(f"internal error: {type(exc).__name__}: {exc}")
        _say("this is a bug in kvsweep: run again with --debug (or KVSWEEP_DEBUG=1) for the "
             "traceback, and report it with that")
        return EXIT_INTERNAL


def _run_command(args) -> int:
    """The command, with every error a user can cause turned into a short message and an exit
    code (--debug or KVSWEEP_DEBUG=1: the traceback as well)."""
    from kvsweep.analysis.shell import QueryError
    from kvsweep.orchestrator.fleet_cli import FleetError
    from kvsweep.orchestrator.matrix import MatrixError
    from kvsweep.orchestrator.run_dir import RunDirLocked
    from kvsweep.orchestrator.sweep import InputProblems, SweepError

    try:
        return args.func(args)
    except (MatrixError, InputProblems) as exc:
        _traceback_if(args)
        _say("the matrix cannot run as it is:")
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunDirLocked as exc:
        _traceback_if(args)
        _say(str(exc))
        return EXIT_LOCKED
    except (FileNotFoundError, FleetError, QueryError, SweepError, NotADirectoryError) as exc:
        _traceback_if(args)
        _say(str(exc))
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader of our output went away (e.g. `| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConnectionError as exc:
        _traceback_if(args)
        _say(f"cannot reach the Ray cluster: {exc} (is `kvsweep head` running there, and is the "
             "address HEAD_IP:6379? docs/fleet.md)")
        return EXIT_BAD_INPUT
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        _traceback_if(args)
        _say(_disk_message(exc, args))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _disk_message(exc: OSError, args) -> str:
    where = exc.filename or getattr(args, "run_dir", None) or "the run directory"
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only"}.get(exc.errno, "permission denied")
    text = f"{what}: {where} ({exc.strerror})."
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and getattr(args, "func", None) in (cmd_run, cmd_resume):
        run_dir = getattr(args, "run_dir", None) or "RUN_DIR"
        text += (" Every attempt already in the run's write-ahead log is kept: free some space "
                 f"(or move the run directory to a disk with room) and run `kvsweep resume {run_dir}`")
    return text


def _traceback_if(args) -> None:
    if _debug(args):
        import traceback

        traceback.print_exc()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvsweep", description=(
        "Sweep llama.cpp K/V cache types: quality (PPL, KL divergence, top-1 agreement) and "
        "speed (pp/tg tokens/s at depth) across a fleet of hosts, into Parquet and reports."))
    p.add_argument("--version", action="version", version=f"kvsweep {kvsweep.__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show Python tracebacks with errors (also: KVSWEEP_DEBUG=1)")
    sub = p.add_subparsers(metavar="COMMAND")

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show Python tracebacks with errors (also: KVSWEEP_DEBUG=1)")
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

    report = command("report", "write the report of a run (Markdown, one HTML page, chart PNGs)", cmd_report)
    report.add_argument("run_dir", type=Path)
    report.add_argument("--budget", action="append", metavar="NAME=KL", default=None,
                        help="a quality budget for the recommendations, e.g. free=0.002 (repeatable; "
                             "replaces the defaults free=0.002, acceptable=0.02, 'no limit'=none)")
    report.add_argument("--screenshot", action="store_true",
                        help="also write report.png, the HTML page as headless Chromium shows it")

    compare = command("compare", "compare two runs cell by cell: speed ratio B/A, quality B-A", cmd_compare)
    compare.add_argument("run_a", type=Path)
    compare.add_argument("run_b", type=Path)
    compare.add_argument("--format", choices=("table", "md"), default="table",
                         help="table: aligned tables on the terminal (default); md: Markdown")
    compare.add_argument("--out", type=Path, help="also write the Markdown to this file")

    sql = command("sql", "SQL over a run's results (DuckDB; no query: an interactive shell)", cmd_sql)
    sql.add_argument("run_dir", type=Path)
    sql.add_argument("query", nargs="?", help='e.g. "SELECT config, ppl, kld_mean FROM quality"')

    head = command("head", "start the Ray head of a fleet (token auth, no dashboard, fixed ports)", cmd_head)
    head.add_argument("--ip", help="the address to bind (default: this host's address on its default route)")
    head.add_argument("--allow-public", action="store_true", help="allow a public address (see docs/fleet.md)")
    head.add_argument("--with-worker", action="store_true", help="this host also runs cells")
    head.add_argument("--host-class", default="", help="with --with-worker: this host's class name")
    head.add_argument("--memory-limit", default="", help="with --with-worker: memory kvsweep may assume, e.g. 20GiB")

    worker = sub.add_parser("worker", help="this host and the fleet: `kvsweep worker join`")
    worker_sub = worker.add_subparsers(metavar="ACTION")
    join = worker_sub.add_parser("join", help="probe this host and join a fleet's head as a worker")
    join.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    join.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                      help="show Python tracebacks with errors (also: KVSWEEP_DEBUG=1)")
    join.set_defaults(func=cmd_worker_join)
    join.add_argument("--address", required=True, help="the head, HEAD_IP:6379")
    join.add_argument("--ip", help="this host's address as the head should reach it")
    join.add_argument("--host-class", default="", help="name of this kind of host (default: backend-device)")
    join.add_argument("--memory-limit", default="", help="memory kvsweep may assume, e.g. 20GiB (default: all)")
    join.add_argument("--skip-pair-check", action="store_true", help="do not check which K/V pairs run")
    join.add_argument("--port-offset", type=int, default=0, metavar="N",
                      help="add N to this node's fixed ports: for a second node on one host, e.g. one "
                           "per llama.cpp build (docs/forks.md)")

    workers = command("workers", "list the fleet's workers (or this host without --address)", cmd_workers)
    workers.add_argument("--address", help="the head, HEAD_IP:6379")

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
    c.add_argument("--redo", choices=("missing", "failed", "oom", "busy"), default="failed",
                   help="what to run again: missing cells only; also failed (default); also oom/skipped; "
                        "failed and also speed cells flagged host-busy")
    c.add_argument("--workers", type=int, default=1, help="worker actors on this host (embedded Ray)")
    c.add_argument("--memory-limit", default="", help="embedded Ray: memory kvsweep may assume on this "
                   "host, e.g. 2GiB (placement, and the context ceiling's probes: docs/measurement.md)")
    c.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    c.add_argument("--no-progress", action="store_true", help="log lines instead of a live display")
    c.add_argument("--flush-every", type=float, default=1.0, metavar="SECONDS",
                   help="how often finished attempts are compacted into Parquet (default 1; each "
                        "attempt is in the run's write-ahead log the moment it arrives either way)")


def _options(args, run_dir: Path | None):
    from kvsweep.orchestrator import fleet_cli
    from kvsweep.orchestrator.sweep import RunOptions

    return RunOptions(run_dir=run_dir, address=args.address, redo=args.redo, n_workers=args.workers,
                      report=not args.no_report, progress=False if args.no_progress else None,
                      flush_interval_s=args.flush_every,
                      memory_limit=fleet_cli.parse_size(args.memory_limit) if args.memory_limit else 0)


def _finish(result) -> int:
    from kvsweep import records

    s = result.summary
    print(f"\nresults: {result.run_dir / 'results'}")
    if result.report:
        print(f"report:  {result.report}")
        if result.report.with_suffix(".html").exists():
            print(f"         {result.report.with_suffix('.html')} (one page, charts inside)")
    print(f"cells:   {result.planned} planned, {result.planned - result.to_run} done before, "
          f"{result.to_run} run now: " + (", ".join(f"{n} {k}" for k, n in s.by_status.items()) or "nothing to do"))
    if s.interrupted:
        return EXIT_INTERRUPTED
    not_ok = sum(n for k, n in s.by_status.items() if k not in (records.OK, records.SKIPPED))
    return EXIT_NOT_ALL_OK if not_ok or s.stranded else 0


def cmd_run(args) -> int:
    if args.dry_run:
        return _print_dry_run(args.matrix, args.address, _options(args, None).memory_limit)
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


def _print_dry_run(matrix_path: Path, address: str | None, memory_limit: int = 0) -> int:
    from kvsweep.orchestrator.plan_view import print_plan
    from kvsweep.orchestrator.sweep import dry_run

    plan = dry_run(matrix_path, address, memory_limit)
    print_plan(plan, address)
    return EXIT_BAD_INPUT if plan.problems else 0


def cmd_status(args) -> int:
    from kvsweep.analysis.status import print_status

    print_status(args.run_dir)
    return 0


def cmd_report(args) -> int:
    from kvsweep.analysis.db import DEFAULT_BUDGETS, parse_budget
    from kvsweep.analysis.report import write_reports

    try:
        budgets = tuple(parse_budget(b) for b in args.budget) if args.budget else DEFAULT_BUDGETS
    except ValueError as exc:
        print(f"kvsweep: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    files = write_reports(args.run_dir, budgets)
    print(files.markdown)
    print(files.html)
    if args.screenshot:
        from kvsweep.analysis.screenshot import NoBrowser, take

        try:
            shot = take(files.html, files.html.with_suffix(".png"))
        except (NoBrowser, RuntimeError) as exc:  # no browser, or it failed: the report stands
            print(f"kvsweep: no screenshot: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(shot.png)
        for error in shot.errors:
            print(f"kvsweep: the page reported: {error}", file=sys.stderr)
        if shot.errors:
            return EXIT_NOT_ALL_OK
    return 0


def cmd_compare(args) -> int:
    from kvsweep.analysis.compare import compare, print_tables, to_markdown

    result = compare(args.run_a, args.run_b)
    if args.format == "md":
        print(to_markdown(result))
    else:
        print_tables(result)
    if args.out:
        args.out.write_text(to_markdown(result))
    return 0


def cmd_sql(args) -> int:
    from kvsweep.analysis.shell import run_query, shell

    if args.query:
        run_query(args.run_dir, args.query)
    else:
        shell(args.run_dir)
    return 0


def cmd_head(args) -> int:
    from kvsweep.orchestrator import fleet_cli

    limit = fleet_cli.parse_size(args.memory_limit) if args.memory_limit else 0
    return fleet_cli.start_head(args.ip, args.allow_public, args.with_worker, args.host_class, limit)


def cmd_worker_join(args) -> int:
    from kvsweep.orchestrator import fleet_cli

    limit = fleet_cli.parse_size(args.memory_limit) if args.memory_limit else 0
    return fleet_cli.join(args.address, args.ip, args.host_class, limit, not args.skip_pair_check,
                          port_offset=args.port_offset)


def cmd_workers(args) -> int:
    from kvsweep.orchestrator import fleet_cli

    fleet_cli.print_workers(fleet_cli.list_workers(args.address))
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
