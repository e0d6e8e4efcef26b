"""dropkit: dropout regularization for PyTorch, done right.

Every dropout variant as a function (:mod:`dropkit.functional`) and a module
(:mod:`dropkit.nn`), all drawing their masks from one counter-based RNG
(Philox4x32-10, :mod:`dropkit.rng`): a mask is a pure function of (seed, element
index), the same on every device and thread count, and regenerated in backward.
``p`` is always the probability of **dropping** an element.
"""

from dropkit import functional, kernels, nn, ops, reference, rng, seed
from dropkit.seed import SeedGenerator
from dropkit.kernels import backend_info
from dropkit.lint import lint  # the function; the module stays importable as dropkit.lint

__version__ = "0.1.0"

__all__ = ["functional", "nn", "ops", "rng", "seed", "SeedGenerator", "kernels", "reference", "backend_info", "lint", "__version__"]
