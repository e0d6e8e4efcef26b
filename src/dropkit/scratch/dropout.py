"""A dropout layer in plain NumPy: read this file top to bottom to learn dropout."""

from __future__ import annotations


import numpy as np

from dropkit._validation import SCALINGS, check_choice, check_p
from dropkit.rng import check_seed, keep_mask_numpy, keep_probability


class DropoutLayer:
    r"""Dropout (Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov, JMLR 2014).

    ``p`` is the probability of **dropping** a unit (not of keeping it), as everywhere in
    dropkit.

    Forward, training, inverted scaling (the default, as in PyTorch and Keras)::

        m_j ~ Bernoulli(1 - p)          # 1 = keep, 0 = drop
        y_j = x_j * m_j / q             # q = keep_probability(p) ~ 1 - p: E[y_j] = x_j, inference needs no change

    Forward, training, classic scaling (the original paper)::

        y_j = x_j * m_j                 # and at inference y_j = (1 - p) * x_j

    Backward: y is linear in x for a fixed mask, so ``dL/dx_j = dL/dy_j * m_j * scale``
    with the *same* mask as the forward pass. Inference: every unit is active.

    The mask comes from the Philox contract of :mod:`dropkit.rng`: call ``k`` of a
    seeded layer uses ``(seed, stream=k)``, the same mask as call ``k`` of
    ``dropkit.nn.Dropout(p, seed=seed)`` (or ``dropkit.functional.dropout(x, p, seed=dropkit.SeedGenerator(seed))``).

    Example:
        >>> layer = DropoutLayer(p=0.5, seed=0)
        >>> y = layer.forward(np.ones((2, 4), np.float32))       # entries 0 or 2
        >>> dx = layer.backward(np.ones_like(y))                  # same zeros as y
    """

    def __init__(
        self,
        p: float = 0.5,
        seed: int | None = None,
        scaling: str = "inverted",
    ):
        self.p = check_p(p, "p")
        self.scaling = check_choice(scaling, "scaling", SCALINGS)
        # No seed: draw one from NumPy's OS entropy, so unseeded layers differ.
        self.seed = (
            check_seed(seed) if seed is not None else int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
        )
        self.calls = 0  # the stream number of the next training call
        self.mask: np.ndarray | None = None  # kept for backward (the fast path regenerates it instead)
        self.scale = 1.0

    def forward(self, inputs: np.ndarray, training: bool = True) -> np.ndarray:
        x = np.asarray(inputs)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"`inputs` must be a floating-point array; received dtype={x.dtype}")
        if not training:
            self.mask, self.scale = None, 1.0
            # Inverted dropout already scaled during training; classic scales now.
            return x if self.scaling == "inverted" else x * x.dtype.type(1.0 - self.p)
        # 1. The mask: element j (row-major) is kept iff its 16-bit Philox value >= threshold(p).
        self.mask = keep_mask_numpy(x.size, self.p, self.seed, stream=self.calls).reshape(x.shape)
        self.calls += 1
        # 2. The scale: 1/q keeps the expected activation unchanged, q = keep_probability(p) being the
        #    keep probability the 16-bit threshold realises (1 - p to within 2^-17); p = 1 drops everything.
        if self.p == 1.0:
            self.scale = 0.0
        else:
            self.scale = 1.0 / keep_probability(self.p) if self.scaling == "inverted" else 1.0
        # 3. Multiply (in float32, or float64 for float64 input, as the fast path does).
        cdt = np.float64 if x.dtype == np.float64 else np.float32
        factor = np.where(self.mask, cdt(self.scale), cdt(0.0))
        return (x.astype(cdt) * factor).astype(x.dtype)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dy * mask * scale (the same mask as the last training forward)."""
        g = np.asarray(grad_output)
        if self.mask is None:  # last forward was inference: y = x (or (1-p) x)
            return g if self.scaling == "inverted" else g * g.dtype.type(1.0 - self.p)
        if g.shape != self.mask.shape:
            raise ValueError(
                f"`grad_output` must have the forward output's shape {self.mask.shape}; received {g.shape}"
            )
        cdt = np.float64 if g.dtype == np.float64 else np.float32
        return (g.astype(cdt) * np.where(self.mask, cdt(self.scale), cdt(0.0))).astype(g.dtype)
