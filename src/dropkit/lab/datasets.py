"""Datasets of the lab: small, offline by default, checksummed when downloaded.

``load_dataset(name, ...)`` returns a :class:`Dataset` (float32 inputs, int64 labels,
a training and a validation split). Names (:data:`DATASETS`):

* ``digits`` -- scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes),
  nothing downloaded; pixels scaled to [0, 1]; a fixed 80/20 split (``val_fraction``).
* ``overfit`` -- a generated, seeded binary task with 10 features and a small, noisy
  training set (100 samples) that a 3x256 MLP memorises; 2000 validation samples.
* ``mnist1d`` -- MNIST-1D (Greydanus 2020): 40-sample 1-D signals, 10 classes, generated
  offline by the ``mnist1d`` package (4000 train / 1000 validation).
* ``fashion-mnist`` and ``mnist`` -- 28x28 images from the IDX files. Training images come
  from ``train-*``, validation from ``t10k-*`` (the official test set). Files are read from
  ``data_dir`` (gz or raw IDX) or downloaded into ``cache_dir`` (default
  ``<cache>/datasets``, ``<cache>`` as for the kernel: ``$DROPKIT_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/dropkit``, else ``~/.cache/dropkit``). Every file is verified by
  SHA-256: a downloaded ``.gz`` against its published digest, and the decompressed IDX
  content against the digest of the original data, so a corrupt or truncated file is
  reported with its path and how to fix it. Downloads stream into a temporary file in
  the same folder and are renamed into place only once verified (``os.replace``), so a
  half-written file is never used and an interrupted download leaves none behind.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "SOURCES",
    "Dataset",
    "DatasetError",
    "IdxFile",
    "dataset_fingerprint",
    "default_cache_dir",
    "download",
    "load_data",
    "load_dataset",
    "load_npz",
    "read_idx",
]

from dropkit._cache import cache_root
from dropkit.lab._names import DATASETS


class DatasetError(ValueError):
    """A dataset could not be loaded: the message names the file and how to fix it."""

    user_facing = True


@dataclass
class Dataset:
    """A classification dataset split into training and validation tensors.

    ``x_*`` are float32 with shape ``(n, *in_shape)``; ``y_*`` are int64 class indices
    (0/1 for a binary task). ``num_classes`` is 2 for a binary task (models output one logit).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    task: str = "multiclass"  # or "binary"
    info: dict = field(default_factory=dict)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_val)} validation, "
            f"input {self.in_shape}, {self.num_classes} classes"
        )


# ---------------------------------------------------------------------------
# IDX sources (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IdxFile:
    """One IDX file: its name (without ``.gz``), the ``.gz`` size and SHA-256 as published,
    and the SHA-256 of the decompressed IDX content (what ``data_dir`` files are checked against)."""

    name: str
    gz_size: int
    gz_sha256: str
    sha256: str


#: Mirrors (tried in order) and files of the downloadable datasets.
SOURCES: dict[str, dict] = {
    "mnist": {
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
        "files": {
            "train-images": IdxFile(
                "train-images-idx3-ubyte",
                9912422,
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            "train-labels": IdxFile(
                "train-labels-idx1-ubyte",
                28881,
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            "val-images": IdxFile(
                "t10k-images-idx3-ubyte",
                1648877,
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            "val-labels": IdxFile(
                "t10k-labels-idx1-ubyte",
                4542,
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        },
        "hint": "",
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "files": {
            "train-images": IdxFile(
                "train-images-idx3-ubyte",
                26421880,
                "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            "train-labels": IdxFile(
                "train-labels-idx1-ubyte",
                29515,
                "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            "val-images": IdxFile(
                "t10k-images-idx3-ubyte",
                4422102,
                "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            "val-labels": IdxFile(
                "t10k-labels-idx1-ubyte",
                5148,
                "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        },
        "hint": " (Debian/Ubuntu: `apt-get install dataset-fashion-mnist`, then "
        "--data-dir /usr/share/datasets/fashion-mnist)",
    },
}


def default_cache_dir() -> Path:
    """``<cache>/datasets``, ``<cache>`` being dropkit's cache root (:func:`dropkit._cache.cache_root`:
    ``$DROPKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/dropkit``, else ``~/.cache/dropkit``).
    """
    return cache_root() / "datasets"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, *, sha256: str, size: int | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its size and SHA-256.

    The bytes stream into a temporary file next to ``dest`` (hashed on the way); only a
    complete file with the right digest is renamed to ``dest`` with ``os.replace``. On any
    failure (network error, wrong digest, Ctrl-C) the temporary file is removed, so
    ``dest`` either does not exist or is complete and verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                out.write(chunk)
                h.update(chunk)
                received += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size is not None and received != size:
            raise DatasetError(f"download of {url} is truncated or wrong: got {received} bytes, expected {size}")
        if h.hexdigest() != sha256:
            raise DatasetError(f"download of {url} has SHA-256 {h.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _remove_stale_parts(folder: Path, name: str) -> None:
    """Temporary files of downloads killed without cleanup (SIGKILL): never used, removed here."""
    if folder.is_dir():
        for part in folder.glob(f"{name}.*.part"):
            part.unlink(missing_ok=True)


def read_idx(path: Path, *, expect_sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a NumPy array, checking its content.

    Raises :class:`DatasetError` naming ``path`` when the gzip stream is truncated or
    corrupt, the header is inconsistent with the file size, or the decompressed content's
    SHA-256 differs from ``expect_sha256``.
    """
    path = Path(path)
    fix = "delete it and run again to download it, or pass --data-dir with a good copy"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path} is corrupt or truncated ({exc}); {fix}") from None
    if expect_sha256 is not None:
        got = hashlib.sha256(raw).hexdigest()
        if got != expect_sha256:
            raise DatasetError(
                f"{path}: SHA-256 of the IDX content is {got}, expected {expect_sha256}: "
                f"the file is corrupt, truncated or not the expected one; {fix}"
            )
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad magic number); {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else ()
    if len(dims) != ndim or len(raw) != header + int(np.prod(dims, dtype=np.int64)):
        raise DatasetError(
            f"{path} is truncated: header says shape {tuple(dims)}, file holds {len(raw) - header} data bytes; {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_in_data_dir(data_dir: Path, f: IdxFile) -> Path:
    for cand in (f.name + ".gz", f.name, f.name.replace("-idx", ".idx"), f.name.replace("-idx", ".idx") + ".gz"):
        if (data_dir / cand).is_file():
            return data_dir / cand
    raise DatasetError(f"{data_dir} has no {f.name}.gz or {f.name} (IDX files expected)")


def _idx_file(name: str, key: str, *, data_dir, cache_dir, download_ok: bool) -> tuple[Path, str | None]:
    """Path of one IDX file and the content digest to check it against."""
    src = SOURCES[name]
    f: IdxFile = src["files"][key]
    if data_dir is not None:
        return _find_in_data_dir(Path(data_dir), f), f.sha256
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / name
    path = folder / (f.name + ".gz")
    _remove_stale_parts(folder, f.name + ".gz")
    if path.is_file():
        got = _sha256_file(path)
        if got != f.gz_sha256:
            raise DatasetError(
                f"{path} has SHA-256 {got}, expected {f.gz_sha256}: the file is corrupt or truncated; "
                "delete it and run again to download it again"
            )
        return path, None  # the .gz digest covers the content
    if not download_ok:
        raise DatasetError(
            f"{name}: {path} is missing and downloads are off; pass --data-dir with the IDX files"
            f" or allow the download{src['hint']}"
        )
    errors = []
    for mirror in src["mirrors"]:
        try:
            return download(mirror + f.name + ".gz", path, sha256=f.gz_sha256, size=f.gz_size), None
        except (OSError, http.client.HTTPException, DatasetError) as exc:
            errors.append(f"{mirror}: {exc}")
    raise DatasetError(
        f"{name}: could not download {f.name}.gz into {folder}:\n  "
        + "\n  ".join(errors)
        + f"\nno partial file was kept; retry, or pass --data-dir with the IDX files{src['hint']}"
    )


def _load_idx_dataset(name, *, data_dir, cache_dir, download_ok, train_size, val_size, split_seed) -> Dataset:
    arrays = {}
    for key in ("train-images", "train-labels", "val-images", "val-labels"):
        path, digest = _idx_file(name, key, data_dir=data_dir, cache_dir=cache_dir, download_ok=download_ok)
        arrays[key] = read_idx(path, expect_sha256=digest)
    for split in ("train", "val"):
        n_img, n_lab = len(arrays[f"{split}-images"]), len(arrays[f"{split}-labels"])
        if n_img != n_lab:
            raise DatasetError(f"{name}: {n_img} {split} images but {n_lab} labels")
    x_tr = torch.from_numpy(arrays["train-images"].astype(np.float32) / 255.0).unsqueeze(1)
    x_va = torch.from_numpy(arrays["val-images"].astype(np.float32) / 255.0).unsqueeze(1)
    y_tr = torch.from_numpy(arrays["train-labels"].astype(np.int64))
    y_va = torch.from_numpy(arrays["val-labels"].astype(np.int64))
    g = torch.Generator().manual_seed(split_seed)
    if train_size is not None and train_size < len(y_tr):
        idx = torch.randperm(len(y_tr), generator=g)[:train_size]
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    if val_size is not None and val_size < len(y_va):
        idx = torch.randperm(len(y_va), generator=g)[:val_size]
        x_va, y_va = x_va[idx], y_va[idx]
    return Dataset(name, x_tr, y_tr, x_va, y_va, 10, info={"validation": "t10k (official test set)"})


# ---------------------------------------------------------------------------
# Offline datasets
# ---------------------------------------------------------------------------
def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if not 0 < n_val < n:
        raise DatasetError(f"`val_fraction`={val_fraction} leaves no training or no validation data ({n} samples)")
    va, tr = perm[:n_val], perm[n_val:]
    return x[tr], y[tr], x[va], y[va]


def _digits(val_fraction: float, split_seed: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is in the lab and test extras
        raise DatasetError("the digits dataset needs scikit-learn: pip install 'dropkit[lab]'") from exc
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]  # (n, 1, 8, 8)
    xt, yt, xv, yv = _split(x, d.target.astype(np.int64), val_fraction, split_seed)
    xt_, yt_, xv_, yv_ = (torch.from_numpy(a) for a in (xt, yt, xv, yv))
    return Dataset("digits", xt_, yt_, xv_, yv_, num_classes=10)


def make_overfit(n_train: int = 100, n_val: int = 2000, features: int = 10, noise: float = 0.5, seed: int = 0):
    """The ``overfit`` task: ``y = 1[x . w + noise * e > 0]`` with ``x, e ~ N(0, 1)``, ``|w| = 1``.

    The label noise caps the best possible accuracy (about 85 % for noise 0.5), so a
    network that reaches 100 % training accuracy on the 100 training samples has
    memorised noise. Returns ``(x_train, y_train, x_val, y_val)`` as NumPy arrays.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(features)
    w /= np.linalg.norm(w)
    x = rng.standard_normal((n_train + n_val, features)).astype(np.float32)
    y = ((x @ w + noise * rng.standard_normal(n_train + n_val)) > 0).astype(np.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _mnist1d(split_seed: int) -> Dataset:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise DatasetError("the mnist1d dataset needs the mnist1d package: pip install mnist1d") from exc
    args = get_dataset_args()
    args.seed = 42 + split_seed  # 42: the published dataset's seed
    state = np.random.get_state()  # make_dataset seeds NumPy's global RNG: leave it as found
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a).astype(dt))
    return Dataset(
        "mnist1d", t(d["x"], np.float32), t(d["y"], np.int64), t(d["x_test"], np.float32), t(d["y_test"], np.int64), 10
    )


def load_dataset(
    name: str,
    *,
    val_fraction: float = 0.2,
    train_size: int | None = None,
    val_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    split_seed: int = 0,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) split into training and validation.

    Args:
        name: ``digits``, ``overfit``, ``mnist1d``, ``fashion-mnist`` or ``mnist``.
        val_fraction: share held out for validation (digits only; the others have fixed splits).
        train_size: keep a random subset of this many training samples (seeded by ``split_seed``).
        val_size: keep a random subset of this many validation samples.
        data_dir: folder with the IDX files (``.gz`` or raw) of mnist / fashion-mnist.
        cache_dir: download folder (default :func:`default_cache_dir` ``/ name``).
        download: allow downloading missing files.
        split_seed: seed of the split and subsets; the same for every training seed, so
            runs with different seeds see the same data.

    Example:
        >>> d = load_dataset("digits")
        >>> d.x_train.shape, d.num_classes
        (torch.Size([1438, 1, 8, 8]), 10)
    """
    from dropkit._validation import check_choice

    check_choice(name, "dataset", DATASETS)
    for arg, value in (("train_size", train_size), ("val_size", val_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"Invalid value for `{arg}`: expected an int >= 1 or None. Received: {arg}={value!r}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"Invalid value for `val_fraction`: expected a number in (0, 1). Received: {val_fraction!r}")
    if name in SOURCES:
        return _load_idx_dataset(
            name,
            data_dir=data_dir,
            cache_dir=cache_dir,
            download_ok=download,
            train_size=train_size,
            val_size=val_size,
            split_seed=split_seed,
        )
    if name == "digits":
        d = _digits(val_fraction, split_seed)
    elif name == "overfit":
        xt, yt, xv, yv = make_overfit(seed=split_seed)
        xt_, yt_, xv_, yv_ = (torch.from_numpy(a) for a in (xt, yt, xv, yv))
        d = Dataset("overfit", xt_, yt_, xv_, yv_, num_classes=2, task="binary")
    else:
        d = _mnist1d(split_seed)
    g = torch.Generator().manual_seed(split_seed)
    if train_size is not None and train_size < len(d.y_train):
        idx = torch.randperm(len(d.y_train), generator=g)[:train_size]
        d.x_train, d.y_train = d.x_train[idx], d.y_train[idx]
    if val_size is not None and val_size < len(d.y_val):
        idx = torch.randperm(len(d.y_val), generator=g)[:val_size]
        d.x_val, d.y_val = d.x_val[idx], d.y_val[idx]
    return d


# ---------------------------------------------------------------------------
# The user's data: FILE.npz and MODULE:FACTORY
# ---------------------------------------------------------------------------
NPZ_ARRAYS = ("x_train", "y_train", "x_val", "y_val")


def _finish_user(name: str, xt, yt, xv, yv, task: str, where: str) -> Dataset:
    """Check shapes and labels, convert to tensors, count classes (or outputs for regression)."""
    if len(xt) != len(yt) or len(xv) != len(yv):
        raise DatasetError(
            f"{where}: x_train has {len(xt)} rows and y_train {len(yt)}; x_val has {len(xv)} rows "
            f"and y_val {len(yv)}: inputs and targets must have one row per sample"
        )
    if len(yt) == 0 or len(yv) == 0:
        raise DatasetError(f"{where}: the training and the validation split each need at least one sample")
    if tuple(xt.shape[1:]) != tuple(xv.shape[1:]):
        raise DatasetError(
            f"{where}: x_train samples have shape {tuple(xt.shape[1:])} but x_val samples "
            f"{tuple(xv.shape[1:])}: both splits need the same input shape"
        )
    x_tr, x_va = (torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in (xt, xv))
    if task == "regression":
        if tuple(yt.shape[1:]) != tuple(yv.shape[1:]):
            raise DatasetError(
                f"{where}: y_train targets have shape {tuple(yt.shape[1:])} but y_val {tuple(yv.shape[1:])}"
            )
        y_tr, y_va = (torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in (yt, yv))
        outputs = int(np.prod(y_tr.shape[1:], dtype=np.int64)) if y_tr.dim() > 1 else 1
        return Dataset(name, x_tr, y_tr, x_va, y_va, outputs, task="regression")
    for split, y in (("y_train", yt), ("y_val", yv)):
        y = np.asarray(y)
        if y.ndim != 1 or not (
            np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))
        ):
            raise DatasetError(
                f"{where}: {split} must be one integer class label per sample for classification "
                f"(received dtype {y.dtype}, shape {y.shape}); use --task regression for real targets"
            )
        if y.min() < 0:
            raise DatasetError(f"{where}: {split} has the negative label {int(y.min())}; labels are 0 .. classes-1")
    y_tr, y_va = (torch.as_tensor(np.asarray(a).astype(np.int64)) for a in (yt, yv))
    classes = int(max(y_tr.max(), y_va.max())) + 1
    if classes < 2:
        raise DatasetError(f"{where}: every label is 0; classification needs at least 2 classes")
    return Dataset(name, x_tr, y_tr, x_va, y_va, classes, task="multiclass")


def load_npz(path: str | os.PathLike, task: str = "classification") -> Dataset:
    """A dataset from a ``.npz`` file holding ``x_train``, ``y_train``, ``x_val``, ``y_val``.

    Inputs become float32 ``(n, *in_shape)``; labels int64 class indices (classification,
    ``num_classes`` = largest label + 1) or float32 targets (regression, ``num_classes`` =
    outputs per sample). Pickled object arrays are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (--dataset FILE.npz with arrays {', '.join(NPZ_ARRAYS)})")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_ARRAYS if k not in z.files]
            if missing:
                raise DatasetError(
                    f"{path} has no array {', '.join(missing)}; it needs {', '.join(NPZ_ARRAYS)} "
                    f"(found: {', '.join(z.files) or 'nothing'})"
                )
            arrays = [z[k] for k in NPZ_ARRAYS]
    except DatasetError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path} is not a readable .npz file of numeric arrays ({exc})") from None
    xt, yt, xv, yv = arrays
    return _finish_user(path.name, xt, yt, xv, yv, task, str(path))


def _from_factory(target: str, task: str) -> Dataset:
    from dropkit.lab.user import call_with_known, load_callable

    made = call_with_known(load_callable(target, "--dataset"), target, task=task)
    if not (isinstance(made, tuple) and len(made) == 2):
        raise DatasetError(
            f"{target} must return (train, val), two map-style datasets of (input, target); "
            f"it returned {type(made).__name__}"
        )
    arrays = []
    for split, ds in zip(("train", "val"), made):
        try:
            n = len(ds)
            items = [ds[i] for i in range(n)]
        except TypeError as exc:
            raise DatasetError(f"{target}: the {split} dataset must support len() and [i] (map-style); {exc}") from None
        if n == 0:
            raise DatasetError(f"{target}: the {split} dataset is empty")
        try:
            xs = torch.stack([torch.as_tensor(np.asarray(x), dtype=torch.float32) for x, _ in items])
            ys = np.stack([np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y) for _, y in items])
        except (RuntimeError, ValueError, TypeError) as exc:
            raise DatasetError(
                f"{target}: the {split} items must be (input, target) pairs of one shape each ({exc})"
            ) from None
        arrays += [xs.numpy(), ys]
    xt, yt, xv, yv = arrays
    return _finish_user(target, xt, yt, xv, yv, task, target)


def load_data(name: str, *, task: str = "classification", **kwargs) -> Dataset:
    """:func:`load_dataset` for a built-in name, :func:`load_npz` for ``FILE.npz``, or the
    ``(train, val)`` map-style datasets returned by ``MODULE:FACTORY`` (materialised into tensors;
    the factory gets ``task=`` if it names it). ``train_size`` / ``val_size`` subsets apply to all.
    """
    from dropkit._validation import check_choice

    check_choice(task, "task", ("classification", "regression"))
    if name.endswith(".npz") or ":" in name:
        d = load_npz(name, task) if name.endswith(".npz") else _from_factory(name, task)
        g = torch.Generator().manual_seed(kwargs.get("split_seed", 0))
        for split, size in (("train", kwargs.get("train_size")), ("val", kwargs.get("val_size"))):
            y = getattr(d, f"y_{split}")
            if size is not None and size < len(y):
                idx = torch.randperm(len(y), generator=g)[:size]
                setattr(d, f"x_{split}", getattr(d, f"x_{split}")[idx])
                setattr(d, f"y_{split}", y[idx])
        return d
    if task == "regression":
        raise ValueError(
            f"Invalid value for `task`: the built-in dataset {name!r} is a classification task. "
            "Received: task='regression'"
        )
    return load_dataset(name, **kwargs)


def dataset_fingerprint(name: str) -> str | None:
    """SHA-256 of a ``.npz`` dataset file (recorded in the run folder's config), else ``None``."""
    if name.endswith(".npz") and Path(name).is_file():
        return _sha256_file(Path(name))
    return None
