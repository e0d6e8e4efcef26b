"""dropkit.viz: the masks of each variant have their structure; the PNG is written by the API and the CLI."""

import pytest
import torch

from dropkit import viz
from dropkit.cli import main

pytest.importorskip("matplotlib")


def test_variant_masks_have_their_structure():
    masks = viz.variant_masks((8, 6, 12, 12), p=0.3, block_size=5, seed=0)
    assert len(masks) == 5 and all(m.shape == (8, 6, 12, 12) and m.dtype == torch.bool for m in masks.values())
    elem, spatial, block, path, locked = masks.values()
    assert 0.2 < 1 - elem.float().mean() < 0.4
    # spatial: whole channels; DropPath: whole examples; locked: one mask per example, same at every step
    assert all(spatial[n, c].all() or not spatial[n, c].any() for n in range(8) for c in range(6))
    assert all(path[n].all() or not path[n].any() for n in range(8))
    assert all(torch.equal(locked[n, 0], locked[n, t]) for n in range(8) for t in range(6))
    assert not torch.equal(locked[0, 0], locked[1, 0])
    # DropBlock drops contiguous blocks: some 5x5 window is fully dropped
    windows = (~block).float().unfold(2, 5, 1).unfold(3, 5, 1).sum((-1, -2))
    assert (windows == 25).any()
    assert torch.equal(viz.variant_masks((8, 6, 12, 12), seed=0)[next(iter(masks))], elem)  # seeded


def test_png_from_api_and_cli(tmp_path, capsys):
    out = viz.save_masks(tmp_path / "a.png", shape=(2, 3, 8, 8))
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(["masks", "--out", str(tmp_path / "b.png"), "--shape", "2,3,8,8", "--p", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "DropBlock2d" in text and "dropped" in text and (tmp_path / "b.png").stat().st_size > 1000


def test_bad_shape():
    with pytest.raises(ValueError, match="N, C, H, W"):
        viz.variant_masks((4, 16))
