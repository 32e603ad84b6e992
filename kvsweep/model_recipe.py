"""A generated model's recipe: everything that decides its bytes (workers/generated_models.py
writes the file). The matrix reads recipes (`generate = {...}`) and cells carry them, so every
host makes the identical file itself."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

ARCHITECTURES = ("llama", "qwen35")


@dataclass(frozen=True)
class ModelRecipe:
    arch: str = "llama"
    seed: int = 0
    n_vocab: int = 0  # 0: just the built-in vocabulary (special + 256 bytes + words)
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 768
    context_length: int = 1 << 20
    # qwen35 only: every `full_attention_interval`-th layer is full attention, the rest are
    # gated delta-net (recurrent) layers with a constant-size state
    full_attention_interval: int = 4

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelRecipe:
        return cls(**json.loads(text))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head
