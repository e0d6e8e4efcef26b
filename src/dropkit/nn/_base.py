"""Shared pieces of dropkit's modules: validation of ``p``, the optional owned RNG stream, repr."""

from __future__ import annotations

from typing import Any

import torch

from dropkit._validation import check_bool, check_choice, check_p, SCALINGS
from dropkit.rng import check_seed
from dropkit.seed import SeedGenerator, state_tensor

_INT64 = 1 << 64


class SeededStream:
    """Mixin: an optional RNG stream owned by a module, saved in its ``state_dict``.

    Without a seed the module has no state at all and every call draws its key from
    torch's global generator. With ``seed=<int>`` call ``k`` in training mode uses
    ``(key=seed, stream=k)``: the state ``[seed, k]`` is the persistent int64 buffer
    ``rng_state`` (two's complement for seeds >= 2**63), drawn from and advanced by the
    registered op ``dropkit::next_key`` (a :class:`dropkit.SeedGenerator` over the buffer).
    So a run resumed from a checkpoint draws exactly the masks an uninterrupted run would,
    torch.compile and torch.export see the advance as a buffer mutation, and an activation
    checkpoint's recompute draws the forward's masks (see :mod:`dropkit.seed`).
    """

    seed: int | None

    def _init_stream(self, seed: int | None) -> None:
        self.seed = None if seed is None else check_seed(seed)
        if self.seed is not None:
            self.register_buffer("rng_state", state_tensor(self.seed))  # type: ignore[attr-defined]

    @property
    def _calls(self) -> int:
        """How many keys the owned stream has drawn, unsigned (0 without a seed)."""
        return int(self.rng_state[1]) % _INT64 if self.seed is not None else 0  # type: ignore[attr-defined]

    @_calls.setter
    def _calls(self, value: int) -> None:
        if self.seed is not None:
            value = check_seed(value, "calls")
            with torch.no_grad():
                self.rng_state[1] = value - _INT64 if value >= 1 << 63 else value  # type: ignore[attr-defined]

    def seed_generator(self) -> SeedGenerator | None:
        """The :class:`dropkit.SeedGenerator` over ``rng_state`` (``None`` without a seed)."""
        return None if self.seed is None else SeedGenerator(state=self.rng_state)  # type: ignore[attr-defined]

    def key_kwargs(self) -> dict[str, Any]:
        """``seed=`` for this call: the owned stream in training, nothing in eval (or without a seed)."""
        if self.seed is None or not self.training:  # type: ignore[attr-defined]
            return {}
        return {"seed": SeedGenerator(state=self.rng_state)}  # type: ignore[attr-defined]

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[override]
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        if self.seed is not None and not keep_vars:  # a snapshot: later calls advance the live buffer in place
            destination[prefix + "rng_state"] = self.rng_state.detach().clone()  # type: ignore[attr-defined]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
        if self.seed is not None and prefix + "rng_state" in state_dict:
            self.seed = int(state_dict[prefix + "rng_state"][0]) % _INT64

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script cannot compile {type(self).__name__} (dropkit's ops are torch.library ops called from "
            "Python). For inference use dropkit.guard.freeze(model) first (it removes dropout layers), then script; "
            "for training graphs use torch.compile or torch.export."
        )


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
