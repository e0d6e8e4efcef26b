"""``dropkit.nn.LSTM`` and ``dropkit.nn.GRU``: torch's recurrent layers with the dropouts RNNs need.

* ``dropout``: between layers, **locked** over time (one mask per sequence and layer);
* ``recurrent_dropout``: on :math:`h_{t-1}` where it enters the gates, one mask per
  sequence for all steps (Gal & Ghahramani 2016); the carried state is never masked;
* ``weight_dropout``: DropConnect on the hidden-to-hidden weights, one sample per
  forward (Merity et al. 2018, AWD-LSTM).

Eval, and training with no dropout active, is torch's own forward (the fused kernel).
With ``dropout``/``weight_dropout`` only, each layer still runs torch's fused kernel
(``torch._VF``) on the dropped weights; ``recurrent_dropout`` needs a masked
``h_{t-1}`` inside the time loop, so it runs a Python loop over time steps.

Randomness: one key per forward (the module's :class:`dropkit.SeedGenerator` when ``seed=``
is given, else drawn from torch's generator), ``(seed, call)``; the mask of kind ``k``
(0 weight, 1 recurrent, 2 between layers) for layer ``l`` and direction ``d`` uses its
sub-stream ``(call << 16) | (4 * (l * D + d) + k)`` (:func:`dropkit.seed.sub_key`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as tnf
from torch import _VF
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from dropkit import functional as F
from dropkit._validation import check_p
from dropkit.nn._base import SeededStream, extra_repr_suffix
from dropkit.rng import batch_shard
from dropkit.seed import resolve_key, sub_key

__all__ = ["LSTM", "GRU"]


def _permute_hidden(hx, permutation: torch.Tensor | None):
    """torch's ``RNNBase.permute_hidden`` for a tensor or an LSTM's (h, c): dim 1 reordered by ``permutation``
    (a plain function: torch.compile / export on torch <= 2.6 cannot call that method of torch's RNN modules)."""
    if permutation is None:
        return hx
    if isinstance(hx, tuple):
        return tuple(h.index_select(1, permutation) for h in hx)
    return hx.index_select(1, permutation)


class _DropRNN(SeededStream):
    """Mixin over ``torch.nn.LSTM`` / ``torch.nn.GRU``: the three dropouts and their forward."""

    # set by torch.nn.RNNBase (the class this mixes into)
    dropout: float
    num_layers: int
    training: bool

    def _init_drop(self, torch_cls, args: tuple, kwargs: dict, recurrent_dropout: float, weight_dropout: float, seed):
        dropout = kwargs.get("dropout", args[5] if len(args) > 5 else 0.0)
        check_p(dropout, "dropout")  # before torch's own check, for our message
        recurrent_dropout = check_p(recurrent_dropout, "recurrent_dropout")
        weight_dropout = check_p(weight_dropout, "weight_dropout")
        torch_cls.__init__(self, *args, **kwargs)
        self.recurrent_dropout = recurrent_dropout
        self.weight_dropout = weight_dropout
        self._init_stream(seed)

    @property
    def p(self) -> float:
        """The largest of ``dropout``, ``recurrent_dropout`` and ``weight_dropout`` (0: deterministic)."""
        return max(self.dropout, self.recurrent_dropout, self.weight_dropout)

    def _dropping(self) -> bool:
        between = self.dropout > 0 and self.num_layers > 1
        return self.training and (between or self.recurrent_dropout > 0 or self.weight_dropout > 0)

    def forward(self, input, hx=None):  # type: ignore[override]
        if not self._dropping():
            return super().forward(input, hx)  # torch's fused forward (its dropout is inactive here)
        return self._forward_dropped(input, hx)

    # -- training with dropout --------------------------------------------------------------
    def _forward_dropped(self, input, hx):
        lstm = self.mode == "LSTM"
        d = 2 if self.bidirectional else 1
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        if isinstance(input, PackedSequence):
            x, batch_sizes, sorted_indices, unsorted_indices = input
            batch, unbatched = int(batch_sizes[0]), False
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{self.mode}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batch_sizes = sorted_indices = unsorted_indices = None
            unbatched = input.dim() == 2
            x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
            batch = x.shape[0 if self.batch_first else 1]
        if hx is None:
            zeros = x.new_zeros(self.num_layers * d, batch, h_size)
            hx = (zeros, x.new_zeros(self.num_layers * d, batch, self.hidden_size)) if lstm else zeros
        elif unbatched:
            hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
        if not torch.compiler.is_compiling():  # eager validation; torch <= 2.6's Dynamo cannot trace torch's checks
            self.check_forward_args(x, hx, batch_sizes)
        hx = _permute_hidden(hx, sorted_indices)
        if batch_sizes is None and self.batch_first:
            x = x.transpose(0, 1)  # work time-major

        gen = self.seed_generator()
        key = resolve_key(gen)  # one key per forward; each mask takes a sub-stream of it
        names = self._flat_weights_names
        per_dir = len(names) // (self.num_layers * d)
        flat = [getattr(self, n) for n in names]  # one read per forward (one sample of any parametrization)
        h0, c0 = (hx[0], hx[1]) if lstm else (hx, None)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            weights = []
            for direction in range(d):
                j = layer * d + direction
                w = list(flat[j * per_dir : (j + 1) * per_dir])
                if self.weight_dropout > 0:
                    with batch_shard(0):  # weights are shared by all shards of a batch: one mask everywhere
                        w[1] = F.dropout(w[1], self.weight_dropout, seed=sub_key(key, 4 * j))
                weights.append(w)
            rows = slice(layer * d, (layer + 1) * d)
            state = (h0[rows], c0[rows]) if lstm else h0[rows]
            if self.recurrent_dropout > 0:
                x, h, c = self._manual_layer(x, batch_sizes, state, weights, key, layer)
            else:
                x, h, c = self._fused_layer(x, batch_sizes, state, [t for w in weights for t in w])
            h_n.append(h)
            c_n.append(c)
            if layer < self.num_layers - 1 and self.dropout > 0:
                x = _locked(x, batch_sizes, self.dropout, sub_key(key, 4 * layer * d + 2))

        h_n = torch.cat(h_n)
        hidden = (h_n, torch.cat(c_n)) if lstm else h_n
        if batch_sizes is not None:
            return PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices), _permute_hidden(
                hidden, unsorted_indices
            )
        if self.batch_first:
            x = x.transpose(0, 1)
        if unbatched:
            x = x.squeeze(0 if self.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden) if lstm else hidden.squeeze(1)
        return x, hidden

    def _fused_layer(self, x, batch_sizes, state, weights):
        """One layer (both directions) with torch's kernel; ``x`` time-major or packed data."""
        fn = _VF.lstm if self.mode == "LSTM" else _VF.gru
        if batch_sizes is None:
            out = fn(x, state, weights, self.bias, 1, 0.0, True, self.bidirectional, False)
        else:
            out = fn(x, batch_sizes, state, weights, self.bias, 1, 0.0, True, self.bidirectional)
        return out[0], out[1], (out[2] if self.mode == "LSTM" else None)

    def _manual_layer(self, x, batch_sizes, state, weights, key, layer):
        """One layer with recurrent dropout: a Python loop over time (padded, with lengths if packed)."""
        lengths = None
        if batch_sizes is not None:
            x, lengths = pad_packed_sequence(PackedSequence(x, batch_sizes))
        lstm = self.mode == "LSTM"
        outs, hs, cs = [], [], []
        for direction, w in enumerate(weights):
            h = state[0][direction] if lstm else state[direction]
            c = state[1][direction] if lstm else None
            sub = sub_key(key, 4 * (layer * len(weights) + direction) + 1)
            mask = F.dropout(torch.ones_like(h), self.recurrent_dropout, seed=sub)
            out, h, c = _run_direction(x, h, c, w, mask, direction == 1, lengths, lstm, self.bias, self.proj_size > 0)
            outs.append(out)
            hs.append(h)
            cs.append(c)
        out = torch.cat(outs, dim=2)
        if lengths is not None:
            out = pack_padded_sequence(out, lengths).data
        return out, torch.stack(hs), (torch.stack(cs) if lstm else None)

    def extra_repr(self) -> str:
        s = super().extra_repr()  # type: ignore[misc]  # torch.nn.RNNBase's, after this mixin in the MRO
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        if self.weight_dropout:
            s += f", weight_dropout={self.weight_dropout}"
        return s + extra_repr_suffix(self)


def _run_direction(x, h, c, w, mask, reverse, lengths, lstm, bias, proj):
    """The recurrence of one direction with ``h_{t-1} * mask`` entering the gates."""
    w_ih, w_hh = w[0], w[1]
    b_ih, b_hh = (w[2], w[3]) if bias else (None, None)
    w_hr = w[-1] if proj else None
    xg = tnf.linear(x, w_ih, b_ih)  # input projections of all steps at once
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    outs: list[torch.Tensor] = [x] * x.shape[0]
    for t in steps:
        hg = tnf.linear(h * mask, w_hh, b_hh)
        if lstm:
            i, f, g, o = (xg[t] + hg).chunk(4, 1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            if w_hr is not None:
                h_new = tnf.linear(h_new, w_hr)
        else:
            (ir, iz, in_), (hr, hz, hn) = xg[t].chunk(3, 1), hg.chunk(3, 1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            h_new = (1 - z) * torch.tanh(in_ + r * hn) + z * h  # the carry uses the unmasked h
            c_new = None
        if lengths is not None:  # past a sequence's end its state stays (reverse: starts at its end)
            valid = (t < lengths).to(h.device).unsqueeze(1)
            h_new = torch.where(valid, h_new, h)
            c_new = torch.where(valid, c_new, c) if lstm else None
        h, c = h_new, c_new
        outs[t] = h
    return torch.stack(outs), h, c


def _locked(x, batch_sizes, p, key):
    """Between-layer dropout, one mask per sequence: a noise shape (1, B, F) on time-major ``x``."""
    if batch_sizes is None:
        return F.locked_dropout(x, p, seed=key)
    batch = int(batch_sizes[0])
    mask = F.dropout(x.new_ones(batch, x.shape[-1]), p, seed=key)
    rows = torch.cat([torch.arange(int(b)) for b in batch_sizes]).to(x.device)  # packed row -> sequence
    return x * mask[rows]


class LSTM(_DropRNN, torch.nn.LSTM):
    r"""``torch.nn.LSTM`` with locked, recurrent and weight dropout (a drop-in: same arguments and ``state_dict``).

    Adds to torch's arguments ``recurrent_dropout`` (Gal & Ghahramani, "A Theoretically
    Grounded Application of Dropout in Recurrent Neural Networks", NeurIPS 2016) and
    ``weight_dropout`` (Merity, Keskar & Socher, "Regularizing and Optimizing LSTM Language
    Models", ICLR 2018), and makes ``dropout`` (between layers) locked over time. With
    masks :math:`m_x` (between layers), :math:`m_h` (recurrent), :math:`M` (weights), all
    fixed for a sequence: :math:`g_t = W_{ih}(x_t \odot m_x) + (W_{hh} \odot M)(h_{t-1} \odot m_h) + b`.

    Args:
        *args, **kwargs: those of ``torch.nn.LSTM`` (input_size, hidden_size, num_layers,
            bias, batch_first, dropout, bidirectional, proj_size, device, dtype).
        recurrent_dropout: rate of the mask on :math:`h_{t-1}`, in [0, 1]. Default: 0.
        weight_dropout: DropConnect rate on every ``weight_hh_l*``, in [0, 1]. Default: 0.
        seed: own a stream; adds ``rng_state`` to the ``state_dict`` (the only key torch lacks).

    Shape:
        As ``torch.nn.LSTM``: input ``(L, N, H_in)`` / ``(N, L, H_in)`` / ``(L, H_in)`` or a
        ``PackedSequence``; returns ``output, (h_n, c_n)``.

    Edge cases: eval (and training with every rate 0) is exactly torch's forward; ``p``
    reads the largest of the three rates. Recurrent dropout runs a Python time loop
    (slower than the fused kernel).

    Example:
        >>> rnn = dropkit.nn.LSTM(32, 64, num_layers=2, dropout=0.3, recurrent_dropout=0.25, weight_dropout=0.5)
        >>> out, (h, c) = rnn(torch.randn(35, 8, 32))
        >>> out.shape, h.shape
        (torch.Size([35, 8, 64]), torch.Size([2, 8, 64]))
    """

    def __init__(
        self, *args, recurrent_dropout: float = 0.0, weight_dropout: float = 0.0, seed: int | None = None, **kwargs
    ):
        self._init_drop(torch.nn.LSTM, args, kwargs, recurrent_dropout, weight_dropout, seed)


class GRU(_DropRNN, torch.nn.GRU):
    r"""``torch.nn.GRU`` with locked, recurrent and weight dropout (a drop-in: same arguments and ``state_dict``).

    As :class:`LSTM`: ``dropout`` between layers locked over time, ``recurrent_dropout`` on
    :math:`h_{t-1}` inside the gates (Gal & Ghahramani 2016), ``weight_dropout`` on
    ``weight_hh_l*`` (AWD-LSTM). The update :math:`h_t = (1-z_t) n_t + z_t h_{t-1}` carries
    the unmasked :math:`h_{t-1}`.

    Args:
        *args, **kwargs: those of ``torch.nn.GRU``.
        recurrent_dropout: rate of the mask on :math:`h_{t-1}`, in [0, 1]. Default: 0.
        weight_dropout: DropConnect rate on every ``weight_hh_l*``, in [0, 1]. Default: 0.
        seed: own a stream saved in the ``state_dict`` as ``rng_state``.

    Shape:
        As ``torch.nn.GRU``; returns ``output, h_n``.

    Example:
        >>> rnn = dropkit.nn.GRU(16, 32, batch_first=True, recurrent_dropout=0.2)
        >>> out, h = rnn(torch.randn(4, 10, 16))
        >>> out.shape
        torch.Size([4, 10, 32])
    """

    def __init__(
        self, *args, recurrent_dropout: float = 0.0, weight_dropout: float = 0.0, seed: int | None = None, **kwargs
    ):
        self._init_drop(torch.nn.GRU, args, kwargs, recurrent_dropout, weight_dropout, seed)
