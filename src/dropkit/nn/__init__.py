"""``torch.nn`` modules for every dropout variant; each follows ``.train()`` / ``.eval()``.

``p`` is always the probability of **dropping** an element.
"""

from dropkit.nn.dropout import Dropout
from dropkit.nn.alpha import AlphaDropout, FeatureAlphaDropout
from dropkit.nn.concrete import ConcreteDropout
from dropkit.nn.drop_block import DropBlock2d, DropBlock3d
from dropkit.nn.drop_connect import DropConnect, drop_connect, remove_drop_connect
from dropkit.nn.drop_path import DropPath
from dropkit.nn.embedding import EmbeddingDropout
from dropkit.nn.gaussian import GaussianDropout, GaussianNoise
from dropkit.nn.locked import LockedDropout
from dropkit.nn.rnn import GRU, LSTM
from dropkit.nn.spatial import Dropout1d, Dropout2d, Dropout3d
from dropkit.nn.fused import FusedBiasActDropoutAdd
from dropkit.nn.replace import ReplaceReport, replace_dropout

__all__ = [
    "Dropout",
    "replace_dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "GaussianNoise",
    "DropBlock2d",
    "DropBlock3d",
    "DropPath",
    "LockedDropout",
    "LSTM",
    "GRU",
    "DropConnect",
    "drop_connect",
    "remove_drop_connect",
    "EmbeddingDropout",
    "ConcreteDropout",
]
__all__ += ["FusedBiasActDropoutAdd", "ReplaceReport"]
