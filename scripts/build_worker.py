#!/usr/bin/env python3
"""Build a kvsweep worker on another llama.cpp: a fork (TurboQuant), a backend (Vulkan, CUDA).

One mechanism for every "worker on a different llama.cpp build": llama-cpp-python's Python
bindings of a chosen release, compiled over a chosen llama.cpp source tree with chosen CMake
flags, installed into a virtual environment with kvsweep on top. That environment runs
`kvsweep worker join` (or `kvsweep run` on one host) like any other.

    python scripts/build_worker.py --venv ~/venvs/kvsweep-tq \\
        --llama-cpp ~/src/llama-cpp-turboquant --bindings 0.3.21 --name turboquant

    python scripts/build_worker.py --venv ~/venvs/kvsweep-vulkan \\
        --cmake-args "-DGGML_VULKAN=ON -DVulkan_INCLUDE_DIR=/opt/vk/usr/include" --name vulkan

--llama-cpp is a directory or a .tar.* archive of the tree (default: the tree the bindings'
own sdist vendors, i.e. mainline). The bindings must match the tree's public headers: the
TurboQuant fork at 69d8e4b needs 0.3.21 (docs/forks.md). Which build a worker runs is recorded
on every result row (build_name, build_commit) from the file `kvsweep_build.json` this script
puts inside the built llama_cpp package.

The wheel is cached by everything that goes into it (bindings sdist, tree content, flags)
under --cache (default ~/.cache/kvsweep/worker-builds): a second build of the same inputs takes
seconds. `--system-site-packages` makes a light environment that shares this interpreter's
packages (Ray, pyarrow, ...) and shadows only llama-cpp-python and kvsweep: what the test suite
uses. Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_BINDINGS = "0.3.36"
SUPPORTED_BINDINGS = ("0.3.21", "0.3.36")  # the range kvsweep is tested on (pyproject.toml)
BUILD_INFO = "kvsweep_build.json"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvsweep" / "worker-builds"


def log(message: str) -> None:
    print(f"build_worker: {message}", file=sys.stderr, flush=True)


class BuildError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_fingerprint(tree: Path) -> str:
    """A hash of a source tree's content: an archive's bytes, a directory's files."""
    if tree.is_file():
        return sha256_file(tree)
    h = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and ".git" not in p.parts):
        h.update(str(path.relative_to(tree)).encode() + b"\0")
        h.update(sha256_file(path).encode())
    return h.hexdigest()


def git_commit(tree: Path) -> str:
    if tree.is_dir() and (tree / ".git").exists():
        out = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.strip()
    return ""


def commit_from_name(tree: Path) -> str:
    """A commit named in an archive's file name (llama-cpp-turboquant-69d8e4b.tar.xz)."""
    m = re.search(r"-([0-9a-f]{7,40})(?:\.tar(?:\.\w+)?|\.tgz)?$", tree.name)
    return m.group(1) if m else ""


def fetch_sdist(bindings: str, cache: Path) -> Path:
    sdists = cache / "sdists"
    found = sorted(sdists.glob(f"llama_cpp_python-{bindings}.tar.gz"))
    if found:
        return found[0]
    sdists.mkdir(parents=True, exist_ok=True)
    log(f"downloading the llama-cpp-python {bindings} sdist from PyPI")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={bindings}", "-d", str(sdists)], check=True,
                   stdout=sys.stderr)
    found = sorted(sdists.glob(f"llama_cpp_python-{bindings}.tar.gz"))
    if not found:
        raise BuildError(f"pip did not leave llama_cpp_python-{bindings}.tar.gz in {sdists}")
    return found[0]


def _extract(archive: Path, into: Path) -> Path:
    """Unpack an archive with one top-level folder; returns that folder."""
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    tops = [p for p in into.iterdir()]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else into


def prepare_source(sdist: Path, tree: Path | None, work: Path, version: str, info: dict) -> Path:
    src = _extract(sdist, work / "sdist")
    shutil.rmtree(src / ".git", ignore_errors=True)
    if tree is not None:
        vendor = src / "vendor" / "llama.cpp"
        shutil.rmtree(vendor)
        if tree.is_file():
            shutil.move(str(_extract(tree, work / "tree")), vendor)
        else:
            shutil.copytree(tree, vendor, ignore=shutil.ignore_patterns(".git"))
    init = src / "llama_cpp" / "__init__.py"
    text, n = re.subn(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text())
    if n != 1:
        raise BuildError(f"{init}: no __version__ line to set")
    init.write_text(text)
    (src / "llama_cpp" / BUILD_INFO).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return src


def build_wheel(args, cache: Path) -> Path:
    tree = Path(args.llama_cpp).expanduser().resolve() if args.llama_cpp else None
    if tree is not None and not tree.exists():
        raise BuildError(f"--llama-cpp {tree}: no such directory or archive")
    sdist = Path(args.sdist).resolve() if args.sdist else fetch_sdist(args.bindings, cache)
    commit = args.commit or (git_commit(tree) or commit_from_name(tree) if tree else "")
    name = args.name or ("mainline" if tree is None else tree.name.split(".tar")[0])
    cmake_args = " ".join(["-DLLAVA_BUILD=OFF", *([f"-DLLAMA_BUILD_COMMIT={commit[:7]}"] if commit else []),
                           args.cmake_args]).strip()
    key = hashlib.sha256(json.dumps({
        "sdist": sha256_file(sdist), "tree": tree_fingerprint(tree) if tree else "",
        "cmake_args": cmake_args, "name": name, "commit": commit, "python": sys.version_info[:2],
    }, sort_keys=True).encode()).hexdigest()[:16]
    out = cache / "wheels" / key
    wheels = sorted(out.glob("llama_cpp_python-*.whl"))
    if wheels and not args.rebuild:
        log(f"reusing the cached wheel {wheels[0]}")
        return wheels[0]
    label = re.sub(r"[^a-z0-9]+", ".", name.lower()).strip(".") or "custom"
    version = args.bindings + (f"+{label}" + (f".{commit[:7]}" if commit else "") if tree is not None or args.name else "")
    info = {"name": name, "commit": commit, "bindings": args.bindings, "cmake_args": cmake_args,
            "source": str(tree) if tree else f"llama-cpp-python {args.bindings} sdist (vendored)"}
    with tempfile.TemporaryDirectory(prefix="kvsweep-build-") as tmp:
        src = prepare_source(sdist, tree, Path(tmp), version, info)
        out.mkdir(parents=True, exist_ok=True)
        log(f"compiling llama-cpp-python {version} (CMAKE_ARGS={cmake_args}); minutes on 2 cores")
        env = {**os.environ, "CMAKE_ARGS": cmake_args}
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)]
        if args.no_build_isolation:
            cmd.insert(4, "--no-build-isolation")
        done = subprocess.run(cmd, env=env, stdout=sys.stderr)
        if done.returncode != 0:
            raise BuildError(f"compiling llama-cpp-python over {tree or 'its vendored tree'} failed "
                             f"(exit {done.returncode}); the compiler's messages are above")
    wheels = sorted(out.glob("llama_cpp_python-*.whl"))
    if not wheels:
        raise BuildError(f"pip wheel left no wheel in {out}")
    return wheels[0]


def make_venv(venv: Path, wheel: Path, system_site: bool, editable: bool) -> None:
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating the environment {venv}")
        cmd = [sys.executable, "-m", "venv", str(venv)] + (["--system-site-packages"] if system_site else [])
        subprocess.run(cmd, check=True)
    marker = venv / ".kvsweep-build"  # what was installed last: the same again is a no-op
    wanted = json.dumps({"wheel": str(wheel), "project": str(PROJECT), "editable": editable})
    if marker.exists() and marker.read_text() == wanted:
        log(f"{venv} already has this build and this kvsweep")
        return
    no_deps = ["--no-deps"] if system_site else []
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["--force-reinstall", "--no-deps", str(wheel)], check=True, stdout=sys.stderr)
    if not system_site:  # the bindings' own dependencies (numpy, jinja2, diskcache, ...)
        subprocess.run(pip + [str(wheel)], check=True, stdout=sys.stderr)
    project = ["-e", str(PROJECT)] if editable else [str(PROJECT)]
    subprocess.run(pip + no_deps + project, check=True, stdout=sys.stderr)
    marker.write_text(wanted)


def check(venv: Path) -> dict:
    """What the new environment's worker reports: bindings, build, the cache types it has."""
    code = ("import json; from kvsweep.workers.probe import probe_host; p = probe_host(); "
            "print(json.dumps({'llama_cpp_python_version': p.llama_cpp_python_version, "
            "'build_name': p.build_name, 'build_commit': p.build_commit, 'backends': p.backends}))")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"the new environment does not run kvsweep's probe:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", required=True, help="the environment to create or update")
    p.add_argument("--llama-cpp", help="llama.cpp source tree: a directory or a .tar.* archive "
                   "(default: the tree the bindings' sdist vendors)")
    p.add_argument("--bindings", default=DEFAULT_BINDINGS,
                   help=f"llama-cpp-python release whose Python bindings to build (default {DEFAULT_BINDINGS}; "
                   f"tested: {', '.join(SUPPORTED_BINDINGS)})")
    p.add_argument("--name", default="", help="what results call this build, e.g. turboquant, vulkan")
    p.add_argument("--commit", default="", help="the tree's commit, when it has no .git and its name says none")
    p.add_argument("--cmake-args", default="", help='extra CMake flags, e.g. "-DGGML_CUDA=on"')
    p.add_argument("--sdist", help="a llama-cpp-python sdist already on disk (no download)")
    p.add_argument("--cache", default=str(default_cache()), help="where built wheels are kept")
    p.add_argument("--system-site-packages", action="store_true",
                   help="share this interpreter's packages; install only the bindings and kvsweep")
    p.add_argument("--no-editable", action="store_true", help="install kvsweep as a copy, not editable")
    p.add_argument("--no-build-isolation", action="store_true",
                   help="compile with this interpreter's scikit-build-core instead of a fresh one")
    p.add_argument("--rebuild", action="store_true", help="ignore a cached wheel")
    args = p.parse_args(argv)
    if args.bindings not in SUPPORTED_BINDINGS:
        log(f"warning: kvsweep is tested with llama-cpp-python {' and '.join(SUPPORTED_BINDINGS)}, "
            f"not {args.bindings}")
    try:
        wheel = build_wheel(args, Path(args.cache).expanduser())
        venv = Path(args.venv).expanduser().resolve()
        make_venv(venv, wheel, args.system_site_packages, not args.no_editable)
        report = check(venv)
    except (BuildError, subprocess.CalledProcessError) as exc:
        log(f"error: {exc}")
        return 1
    log(f"ready: {venv}/bin/kvsweep ({json.dumps(report)})")
    print(venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
