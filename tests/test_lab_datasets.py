"""Lab datasets: offline sets, IDX parsing, checksummed atomic downloads from a local HTTP server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dropkit.lab import datasets as ds


def test_digits_split_is_fixed_and_scaled():
    a = ds.load_dataset("digits")
    b = ds.load_dataset("digits")
    assert a.in_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_val) == 1797
    assert torch.equal(a.x_val, b.x_val)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0


def test_overfit_task_is_seeded_binary_with_10_features():
    a = ds.load_dataset("overfit")
    assert a.task == "binary" and a.in_shape == (10,) and len(a.y_train) == 100
    assert set(a.y_train.tolist()) == {0, 1}
    assert torch.equal(a.x_train, ds.load_dataset("overfit").x_train)
    assert not torch.equal(a.x_train, ds.load_dataset("overfit", split_seed=1).x_train)


def test_mnist1d_generated_offline_leaves_numpy_rng_alone():
    pytest.importorskip("mnist1d")
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    d = ds.load_dataset("mnist1d", train_size=500)
    assert np.array_equal(np.random.get_state()[1], before)
    assert d.in_shape == (40,) and len(d.y_train) == 500 and len(d.y_val) == 1000


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="dataset.*digits.*mnist"):
        ds.load_dataset("imagenet")
    with pytest.raises(ValueError, match="train_size"):
        ds.load_dataset("digits", train_size=0)


# --------------------------------------------------------------------------- IDX fixtures
def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """Tiny IDX files (gz) served over HTTP on 127.0.0.1, registered as the 'mnist' source."""
    rng = np.random.default_rng(0)
    serve = tmp_path / "serve"
    serve.mkdir()
    files = {}
    for key, name, arr in (
        ("train-images", "train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28))),
        ("train-labels", "train-labels-idx1-ubyte", rng.integers(0, 10, 30)),
        ("val-images", "t10k-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28))),
        ("val-labels", "t10k-labels-idx1-ubyte", rng.integers(0, 10, 12)),
    ):
        raw = _idx(arr)
        gz = gzip.compress(raw, mtime=0)
        (serve / (name + ".gz")).write_bytes(gz)
        files[key] = ds.IdxFile(name, len(gz), hashlib.sha256(gz).hexdigest(), hashlib.sha256(raw).hexdigest())

    handler = functools.partial(_Handler, directory=str(serve))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setitem(ds.SOURCES, "mnist", {"mirrors": [url], "files": files, "hint": ""})
    yield {"serve": serve, "url": url, "files": files, "server": server}
    server.shutdown()
    server.server_close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files; a path starting with /cut/ sends half of the file and hangs up."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        if self.path.startswith("/cut/"):
            data = (Path(self.directory) / self.path[5:]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


def test_download_verifies_and_caches(fake_mnist, tmp_path):
    cache = tmp_path / "cache"
    d = ds.load_dataset("mnist", cache_dir=cache)
    assert d.in_shape == (1, 28, 28) and len(d.y_train) == 30 and len(d.y_val) == 12
    assert sorted(p.name for p in cache.iterdir()) == sorted(f.name + ".gz" for f in fake_mnist["files"].values())
    fake_mnist["server"].shutdown()  # second load must not touch the network
    d2 = ds.load_dataset("mnist", cache_dir=cache, download=False)
    assert torch.equal(d.x_train, d2.x_train)


def test_corrupt_cached_file_reported_with_path_and_fix(fake_mnist, tmp_path):
    cache = tmp_path / "cache"
    ds.load_dataset("mnist", cache_dir=cache)
    bad = cache / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10])  # truncated
    with pytest.raises(ds.DatasetError, match=r"train-labels-idx1-ubyte\.gz has SHA-256 .*delete it and run again"):
        ds.load_dataset("mnist", cache_dir=cache)


def test_interrupted_download_leaves_no_partial_file(fake_mnist, tmp_path):
    f = fake_mnist["files"]["train-images"]
    dest = tmp_path / "dl" / (f.name + ".gz")
    with pytest.raises(Exception):
        ds.download(fake_mnist["url"] + "cut/" + f.name + ".gz", dest, sha256=f.gz_sha256, size=f.gz_size)
    assert list((tmp_path / "dl").iterdir()) == []


def test_wrong_digest_download_leaves_no_file(fake_mnist, tmp_path):
    f = fake_mnist["files"]["train-images"]
    dest = tmp_path / "dl" / (f.name + ".gz")
    with pytest.raises(ds.DatasetError, match="SHA-256"):
        ds.download(fake_mnist["url"] + f.name + ".gz", dest, sha256="0" * 64)
    assert list((tmp_path / "dl").iterdir()) == []


def test_failed_mirror_reports_and_keeps_nothing(fake_mnist, tmp_path, monkeypatch):
    src = dict(ds.SOURCES["mnist"], mirrors=[fake_mnist["url"] + "cut/"])
    monkeypatch.setitem(ds.SOURCES, "mnist", src)
    cache = tmp_path / "cache"
    with pytest.raises(ds.DatasetError, match="(?s)could not download .*no partial file"):
        ds.load_dataset("mnist", cache_dir=cache)
    assert not any(cache.iterdir())


def test_stale_part_file_of_a_killed_download_is_removed(fake_mnist, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / "train-images-idx3-ubyte.gz.abc123.part"
    stale.write_bytes(b"half")
    ds.load_dataset("mnist", cache_dir=cache)
    assert not stale.exists()


def test_no_download_without_files_says_how_to_fix(fake_mnist, tmp_path):
    with pytest.raises(ds.DatasetError, match="downloads are off.*--data-dir"):
        ds.load_dataset("mnist", cache_dir=tmp_path / "empty", download=False)


def test_data_dir_reads_gz_and_raw_and_checks_content(fake_mnist, tmp_path):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for f in fake_mnist["files"].values():
        (raw_dir / f.name).write_bytes(gzip.decompress((fake_mnist["serve"] / (f.name + ".gz")).read_bytes()))
    a = ds.load_dataset("mnist", data_dir=fake_mnist["serve"])
    b = ds.load_dataset("mnist", data_dir=raw_dir, train_size=10)
    assert len(b.y_train) == 10 and torch.equal(a.x_val, b.x_val)
    bad = raw_dir / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(ds.DatasetError, match=r"t10k-labels-idx1-ubyte: SHA-256 of the IDX content .*--data-dir"):
        ds.load_dataset("mnist", data_dir=raw_dir)
    with pytest.raises(ds.DatasetError, match="has no train-images"):
        ds.load_dataset("mnist", data_dir=tmp_path)


def test_truncated_gzip_is_caught_by_read_idx(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(np.arange(200) % 256))[:-20])
    with pytest.raises(ds.DatasetError, match=r"x-idx1-ubyte\.gz is corrupt or truncated"):
        ds.read_idx(path)
    raw = tmp_path / "y-idx1-ubyte"
    raw.write_bytes(_idx(np.arange(50) % 256)[:-5])
    with pytest.raises(ds.DatasetError, match="truncated"):
        ds.read_idx(raw)


def test_fashion_mnist_from_debian_package_if_installed():
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not (folder / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    d = ds.load_dataset("fashion-mnist", data_dir=folder, train_size=100, val_size=50)
    assert d.in_shape == (1, 28, 28) and len(d.y_train) == 100 and len(d.y_val) == 50


def test_the_dataset_cache_shares_dropkits_cache_root(monkeypatch, tmp_path):
    for var in ("DROPKIT_CACHE_DIR", "DROPKIT_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ds.default_cache_dir() == tmp_path / "home" / ".cache" / "dropkit" / "datasets"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ds.default_cache_dir() == tmp_path / "xdg" / "dropkit" / "datasets"
    monkeypatch.setenv("DROPKIT_CACHE", str(tmp_path / "legacy"))  # an old name: not read
    assert ds.default_cache_dir() == tmp_path / "xdg" / "dropkit" / "datasets"
    monkeypatch.setenv("DROPKIT_CACHE_DIR", str(tmp_path / "root"))  # the kernel's root wins
    assert ds.default_cache_dir() == tmp_path / "root" / "datasets"
