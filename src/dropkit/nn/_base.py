"""Shared pieces of dropkit's modules: validation of ``p``, the optional owned RNG stream, repr."""

from __future__ import annotations

from typing import Any

import torch

from dropkit._validation import check_bool, check_choice, check_p, SCALINGS
from dropkit.rng import check_seed

_INT64 = 1 << 64


class SeededStream:
    """Mixin: an optional RNG stream owned by a module, saved in its ``state_dict``.

    Without a seed the module has no state at all and every call draws its key from
    torch's global generator. With ``seed=<int>`` call ``k`` in training mode uses
    ``(key=seed, stream=k)``; the pair ``(seed, k)`` is stored in the persistent buffer
    ``rng_state`` (int64, two's complement for seeds >= 2**63), so a run resumed from a
    checkpoint draws exactly the masks an uninterrupted run would have.
    """

    seed: int | None
    _calls: int

    def _init_stream(self, seed: int | None) -> None:
        self.seed = None if seed is None else check_seed(seed)
        self._calls = 0
        if self.seed is not None:
            self.register_buffer("rng_state", torch.zeros(2, dtype=torch.int64))  # type: ignore[attr-defined]

    def rng_kwargs(self) -> dict[str, int]:
        """Keyword arguments (``seed``, ``stream``) for the next training-mode call; advances the stream."""
        if self.seed is None:
            return {}
        stream = self._calls
        self._calls += 1
        return {"seed": self.seed, "stream": stream}

    def key_kwargs(self) -> dict[str, int]:
        """``seed``/``stream`` for this call: the owned stream in training, nothing in eval."""
        return self.rng_kwargs() if self.training else {}  # type: ignore[attr-defined]

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[override]
        if self.seed is not None:
            seed = self.seed - _INT64 if self.seed >= 1 << 63 else self.seed
            self.rng_state.copy_(torch.tensor([seed, self._calls], dtype=torch.int64))  # type: ignore[attr-defined]
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
        if self.seed is not None and prefix + "rng_state" in state_dict:
            seed, calls = (int(v) for v in state_dict[prefix + "rng_state"].tolist())
            self.seed, self._calls = seed % _INT64, calls


def init_dropout_args(module: Any, p: float, inplace: bool, scaling: str, *, allow_one: bool = True) -> None:
    """Validate and set the attributes every dropkit dropout module has."""
    module.p = check_p(p, allow_one=allow_one)
    module.inplace = check_bool(inplace, "inplace")
    module.scaling = check_choice(scaling, "scaling", SCALINGS)


def extra_repr_suffix(module: Any) -> str:
    """Non-default extras appended to ``p=..., inplace=...``."""
    parts = []
    if getattr(module, "scaling", "inverted") != "inverted":
        parts.append(f"scaling={module.scaling!r}")
    if getattr(module, "seed", None) is not None:
        parts.append(f"seed={module.seed}")
    return "".join(", " + s for s in parts)
