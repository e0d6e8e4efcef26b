"""``torch.nn`` modules for every dropout variant; each follows ``.train()`` / ``.eval()``.

``p`` is always the probability of **dropping** an element.
"""

from dropkit.nn.dropout import Dropout, replace_dropout
from dropkit.nn.fused import FusedBiasActDropoutAdd

__all__ = ["Dropout", "replace_dropout"]
__all__ += ["FusedBiasActDropoutAdd"]
