"""Tiny models from the libraries people train with, built from configs (no weights, no network), as lab factories.

Each is a factory ``(in_shape, num_classes) -> nn.Module`` the lab takes with ``--model`` (its dropout layers are
torch's, timm's or torchvision's: ``dropkit compare`` converts them, or ``--no-replace`` keeps them), and the
model set the tests and ``benchmarks/bench_models.py`` measure. They need the ``integrations`` extra
(``transformers``, ``timm``, ``torchvision``), imported only when a factory is called.

``tiny_bert`` and ``tiny_gpt2`` are text classifiers: an input of any shape is read as a sequence of tokens, one
per value, ``token = floor(16 * sigmoid(4 (x - 1/2)))`` (16 tokens: a digits image, values in [0, 1], becomes a
64-token sentence), with a classification token ``16`` first (BERT's [CLS], read by its pooler) or last
(GPT-2 classifies from the last token), so ``dropkit compare --model dropkit.lab.zoo:tiny_bert --dataset digits`` trains a BERT on
data the package ships.

Example:
    >>> model = dropkit.lab.zoo.tiny_bert((1, 8, 8), 10)      # transformers' BertForSequenceClassification
    >>> model(torch.rand(4, 1, 8, 8)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["tiny_bert", "tiny_gpt2", "tiny_vit", "tiny_efficientnet", "VOCAB"]

#: Tokens of the text models' input reading (values are bucketed into this many tokens).
VOCAB = 16


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """Per-sample values -> token ids in [0, VOCAB): ``floor(VOCAB * sigmoid(4 (x - 1/2)))``, flattened."""
    t = torch.sigmoid(4.0 * (x.flatten(1).float() - 0.5)) * VOCAB
    return t.long().clamp_(0, VOCAB - 1)


class TextClassifier(torch.nn.Module):
    """A transformers sequence classifier over :func:`_tokens` of the input and a classification token (id
    ``VOCAB``) first (``cls_first``, BERT) or last (GPT-2); returns the logits ``(N, classes)``."""

    def __init__(self, model: torch.nn.Module, cls_first: bool):
        super().__init__()
        self.model = model
        self.cls_first = cls_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = _tokens(x)
        cls = torch.full((tokens.shape[0], 1), VOCAB, dtype=tokens.dtype, device=tokens.device)
        ids = torch.cat([cls, tokens] if self.cls_first else [tokens, cls], dim=1)
        return self.model(input_ids=ids, return_dict=True).logits


def _length(in_shape: Sequence[int]) -> int:
    n = 1
    for s in in_shape:
        n *= int(s)
    return n


def tiny_bert(
    in_shape: Sequence[int], num_classes: int, *, p: float = 0.1, attn_implementation: str = "sdpa"
) -> torch.nn.Module:
    """A 2-layer BERT (hidden 32, 2 heads) classifier; ``p``: hidden and attention dropout (torch's modules/calls)."""
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=VOCAB + 1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=_length(in_shape) + 1, num_labels=num_classes, hidden_dropout_prob=p,
        attention_probs_dropout_prob=p, attn_implementation=attn_implementation,
    )  # fmt: skip
    return TextClassifier(transformers.BertForSequenceClassification(cfg), cls_first=True)


def tiny_gpt2(
    in_shape: Sequence[int], num_classes: int, *, p: float = 0.1, attn_implementation: str = "sdpa"
) -> torch.nn.Module:
    """A 2-layer GPT-2 (width 32, 2 heads) classifier on the last token; ``p``: its three dropout rates."""
    import transformers

    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB + 1, n_positions=_length(in_shape) + 1, num_labels=num_classes,
        resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, bos_token_id=0, eos_token_id=0, pad_token_id=None,
        attn_implementation=attn_implementation,
    )  # fmt: skip
    model = transformers.GPT2ForSequenceClassification(cfg)
    model.config.pad_token_id = VOCAB + 1  # outside the vocabulary: no token is padding, the last one classifies
    return TextClassifier(model, cls_first=False)


def tiny_vit(
    in_shape: Sequence[int], num_classes: int, *, p: float = 0.1, drop_path_rate: float = 0.2
) -> torch.nn.Module:
    """timm's ViT (depth 2, width 192, patches of 8) with ``drop_path_rate`` and dropout ``p``; images (C, H, W)."""
    import timm

    c, h, w = (tuple(in_shape) + (1, 1))[:3] if len(in_shape) < 3 else tuple(in_shape)[-3:]
    patch = 8 if min(h, w) >= 16 else 4
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=(h, w), patch_size=patch, in_chans=c, depth=2,
        num_classes=num_classes, drop_rate=p, attn_drop_rate=p, drop_path_rate=drop_path_rate,
    )  # fmt: skip


def tiny_efficientnet(
    in_shape: Sequence[int], num_classes: int, *, stochastic_depth_prob: float = 0.2
) -> torch.nn.Module:
    """torchvision's EfficientNet-B0 (StochasticDepth in every block) for ``num_classes``; images (3, H, W)."""
    import torchvision

    return torchvision.models.efficientnet_b0(stochastic_depth_prob=stochastic_depth_prob, num_classes=num_classes)
