"""Names the lab accepts, in one place (no torch import): the command line's choices come from here."""

DATASETS = ("digits", "overfit", "mnist1d", "fashion-mnist", "mnist")
MODELS = ("mlp", "overfit-mlp", "cnn", "lstm")
VARIANTS = ("Dropout", "GaussianDropout", "AlphaDropout", "Dropout2d", "DropBlock2d", "LockedDropout")
