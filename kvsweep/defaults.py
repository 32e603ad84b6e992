"""Defaults that more than one module needs, each in one place (the matrix documents them:
docs/matrix.md)."""

from __future__ import annotations

MAX_CONTEXTS = 4  # [quality] max_contexts: compared caches sharing one baseline pass on a worker
OOM_RETRIES = 2  # [retry] oom_retries: in-worker tries after the first OOM
OOM_BACKOFF_S = 2.0  # [retry] oom_backoff_s: first wait between them (doubles, at most 60 s)
CRASH_RETRIES = 1  # [retry] crash_retries
