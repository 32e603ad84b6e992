"""kvsweep: sweep K/V cache types across a fleet of llama.cpp hosts.

The import package `kvsweep` maps the project's top-level folders (see pyproject.toml):
`kvsweep.orchestrator` is orchestrator/, `kvsweep.workers` is workers/, `kvsweep.analysis` is
analysis/. This folder holds only what both sides share: cache types, cells, result schema.
"""

__version__ = "0.1.0"
