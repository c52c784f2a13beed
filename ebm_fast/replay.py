"""``ReplayBuffer``: past chain states on the device, the starting points of persistent chains.

Training an EBM by contrastive divergence (Du & Mordatch 2019) starts most negative chains from
states of earlier iterations: with probability ``p`` (0.95) a chain restarts from a state drawn from
the buffer, otherwise from uniform noise. The buffer is a fixed-capacity ring on the device; states
are stored as ``uint8`` (quantised over ``value_range``, 4x less memory -- the released code stores
images) or in a floating dtype, with optional labels (the conditions the states were sampled under).

Drawing never synchronises with the host: the fill level is a host integer that only :meth:`add`
changes (adding is host-driven anyway), and the draw itself -- indices, the buffer/noise choice per
row, the noise -- is device work.

Class-conditional draws (``sample(n, labels=y, conditional=True)``) take each buffer row from the
slots whose stored label equals that row's asked label, as JEM's buffer draws row ``i`` from the slice
of class ``y_i``: a uniform choice among the matching slots (the largest of uniform keys over the
``n x len(buffer)`` match mask, still without a host sync); a row whose label no slot holds is fresh.
States added without labels to a labelled buffer are *unlabelled*: conditional draws never pick them.
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["ReplayBuffer", "ReplaySample"]

_UINT8_LEVELS = 255.0


class ReplaySample(NamedTuple):
    """A draw of ``n`` starting states.

    Attributes:
        x: ``[n, *shape]`` states (float32 for a uint8 buffer, else the buffer's dtype), in ``value_range``
            for rows drawn from the buffer.
        labels: ``[n, *label_shape]``: stored labels of buffer rows; for fresh rows the ``labels``
            passed to :meth:`ReplayBuffer.sample` (else the stored label of the slot drawn). None for a
            buffer without labels.
        index: int64 ``[n]``: the slot each row was drawn from (fresh rows too), for :meth:`ReplayBuffer.write`.
        from_buffer: bool ``[n]``: True where the row is a stored state, False where it is fresh noise.
    """

    x: Tensor
    labels: Tensor | None
    index: Tensor
    from_buffer: Tensor


class ReplayBuffer:
    """A fixed-capacity ring buffer of chain states on one device.

    Args:
        capacity: the number of states kept (the oldest are overwritten first).
        shape: the shape of one state, e.g. ``(3, 64, 64)``.
        dtype: storage dtype: ``torch.uint8`` (quantised over ``value_range``) or a floating dtype
            (default ``torch.float32``).
        device: where the buffer lives (default: the current default device).
        label_shape: the shape of one label (``()`` for a class index, ``(C,)`` for a one-hot or a
            position), or None for no labels.
        label_dtype: the labels' dtype (default ``torch.float32``).
        value_range: ``(lo, hi)``, the range of the states (default ``(0, 1)``, images): uint8
            quantisation and the default fresh noise (uniform in it) use it.

    Usage (the released code's training loop)::

        buf = ReplayBuffer(10000, (3, 64, 64), dtype=torch.uint8, device="cuda")
        x0, *_ = buf.sample(batch, p=0.95)       # 95% from the buffer, 5% uniform noise
        x = ebm_fast.sample(expr, x0, ...)
        buf.add(x)                               # ring append
    """

    def __init__(self, capacity: int, shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, label_shape: Sequence[int] | None = None,
                 label_dtype: torch.dtype = torch.float32, value_range: tuple[float, float] = (0.0, 1.0)):
        if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        if isinstance(shape, numbers.Integral):
            shape = (int(shape),)
        shape = tuple(int(s) for s in shape)
        if any(s < 1 for s in shape):
            raise ValueError(f"shape must hold positive sizes, got {shape}")
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise TypeError(f"dtype must be torch.uint8 or a floating dtype, got {dtype}")
        lo, hi = (float(v) for v in value_range)
        if not lo < hi:
            raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range}")
        device = torch.device(device) if device is not None else torch.empty(0).device
        self.capacity, self.shape, self.dtype, self.device = int(capacity), shape, dtype, device
        self.value_range = (lo, hi)
        self.data = torch.zeros((self.capacity, *shape), dtype=dtype, device=device)
        self.label_shape = None if label_shape is None else tuple(int(s) for s in label_shape)
        self.labels = (None if label_shape is None else
                       torch.zeros((self.capacity, *self.label_shape), dtype=label_dtype, device=device))
        # which slots hold a label (a labelled buffer may be given states without labels)
        self.labelled = None if label_shape is None else torch.zeros(self.capacity, dtype=torch.bool, device=device)
        self._size = 0  # filled slots (host-side: only add() changes it)
        self._next = 0  # the ring's write position

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return (f"ReplayBuffer({self._size}/{self.capacity} x {self.shape}, {self.dtype}, {self.device}"
                f"{'' if self.labels is None else f', labels {self.label_shape}'})")

    @property
    def state_dtype(self) -> torch.dtype:
        """The dtype :meth:`sample` returns states in."""
        return torch.float32 if self.dtype == torch.uint8 else self.dtype

    # ---- storage conversion -------------------------------------------------------------------
    def _encode(self, x: Tensor) -> Tensor:
        if self.dtype != torch.uint8:
            return x.to(self.dtype)
        lo, hi = self.value_range
        q = ((x.float() - lo) * (_UINT8_LEVELS / (hi - lo))).round_().clamp_(0.0, _UINT8_LEVELS)
        return q.to(torch.uint8)

    def _decode(self, q: Tensor) -> Tensor:
        if self.dtype != torch.uint8:
            return q
        lo, hi = self.value_range
        return q.float().mul_((hi - lo) / _UINT8_LEVELS).add_(lo)

    def _check_states(self, name: str, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a Tensor of shape (n, *{self.shape}), got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.shape or x.dim() != len(self.shape) + 1:
            raise ValueError(f"{name} must have shape (n, *{self.shape}), got {tuple(x.shape)}")
        return x.detach().to(self.device)

    def _check_labels(self, labels: Tensor | None, n: int, required: bool) -> Tensor | None:
        if self.labels is None:
            if labels is not None:
                raise ValueError("this buffer stores no labels (label_shape=None), but labels were given")
            return None
        if labels is None:
            if required:
                raise ValueError(f"this buffer stores labels of shape {self.label_shape}: pass labels "
                                 f"of shape ({n}, *{self.label_shape})")
            return None
        labels = torch.as_tensor(labels)
        if tuple(labels.shape) != (n, *self.label_shape):
            raise ValueError(f"labels must have shape {(n, *self.label_shape)}, got {tuple(labels.shape)}")
        return labels.detach().to(device=self.device, dtype=self.labels.dtype)

    # ---- writing ------------------------------------------------------------------------------
    def add(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Append states ``x`` ``[n, *shape]`` (and their labels) to the ring, overwriting the oldest.

        When ``n`` exceeds the capacity only the last ``capacity`` rows are kept. On a labelled buffer
        ``labels`` may be left out: those slots are then unlabelled (their label reads as zeros, and
        conditional draws skip them).
        """
        x = self._check_states("x", x)
        labels = self._check_labels(labels, x.shape[0], required=False)
        n = x.shape[0]
        if n == 0:
            return
        if n > self.capacity:
            x = x[n - self.capacity:]
            labels = None if labels is None else labels[n - self.capacity:]
            n = self.capacity
        idx = (torch.arange(n, device=self.device) + self._next) % self.capacity
        self.data.index_copy_(0, idx, self._encode(x))
        if self.labels is not None:
            self.labels.index_copy_(0, idx, labels if labels is not None else torch.zeros_like(self.labels[:n]))
            self.labelled.index_fill_(0, idx, labels is not None)
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def write(self, index: Tensor, x: Tensor, labels: Tensor | None = None) -> None:
        """Overwrite slots ``index`` (int64 ``[n]``, e.g. from :meth:`sample`) with states ``x`` ``[n, *shape]``.

        This is the persistent-chain update of JEM-style training (every row goes back where it was
        drawn from). Slots beyond the current fill level count as filled afterwards only through
        :meth:`add`; pass indices below ``len(self)``. Duplicate indices: one of the rows wins.
        Without ``labels`` a slot keeps the label it had.
        """
        x = self._check_states("x", x)
        if not isinstance(index, Tensor) or index.dim() != 1 or index.shape[0] != x.shape[0]:
            raise ValueError(f"index must be an int64 tensor of shape ({x.shape[0]},), got "
                             f"{tuple(index.shape) if isinstance(index, Tensor) else type(index).__name__}")
        labels = self._check_labels(labels, x.shape[0], required=False)
        index = index.to(device=self.device, dtype=torch.int64)
        self.data.index_copy_(0, index, self._encode(x))
        if labels is not None:
            self.labels.index_copy_(0, index, labels)
            self.labelled.index_fill_(0, index, True)

    # ---- drawing ------------------------------------------------------------------------------
    def sample(self, n: int, p: float = 0.95, *, init: Tensor | Callable[[int], Tensor] | None = None,
               labels: Tensor | None = None, conditional: bool = False,
               generator: torch.Generator | None = None) -> ReplaySample:
        """Draw ``n`` starting states: each row from the buffer with probability ``p``, else fresh.

        Args:
            n: rows to draw.
            p: probability that a row comes from the buffer (an empty buffer gives fresh rows only).
            init: fresh states: a tensor ``[n, *shape]`` (rows taken where fresh), a callable
                ``n -> [n, *shape]``, or None for uniform noise in ``value_range``.
            labels: ``[n, *label_shape]`` labels for the fresh rows (e.g. the data batch's).
            conditional: draw row ``i`` from the slots whose stored label equals ``labels[i]`` (needs
                ``labels``): every returned label is then the asked one. A row whose label no filled
                slot holds is fresh.
            generator: a ``torch.Generator`` on the buffer's device (default: torch's default one,
                so ``torch.manual_seed`` makes draws repeatable).

        Returns:
            A :class:`ReplaySample` ``(x, labels, index, from_buffer)``. No host synchronisation.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        labels = self._check_labels(labels, n, required=False)
        if not isinstance(conditional, bool):
            raise TypeError(f"conditional must be True or False, got {type(conditional).__name__}")
        if conditional and labels is None:
            raise ValueError("conditional=True draws each row from the slots of its label: pass labels "
                             f"of shape ({n}, *{self.label_shape})" if self.labels is not None else
                             "conditional=True needs a buffer with labels (label_shape=...)")
        dev, size = self.device, self._size
        if conditional:
            index, matched = self._matching_slots(labels, generator)
        else:
            index = torch.randint(0, max(size, 1), (n,), device=dev, generator=generator)
        if size == 0:
            from_buffer = torch.zeros(n, dtype=torch.bool, device=dev)
        else:
            from_buffer = torch.rand(n, device=dev, generator=generator) < p
            if conditional:
                from_buffer &= matched
        fresh = self._fresh(n, init, generator)
        stored = self._decode(self.data.index_select(0, index))
        mask = from_buffer.view(n, *([1] * len(self.shape)))
        x = torch.where(mask, stored, fresh)
        out_labels = None
        if self.labels is not None:
            out_labels = self.labels.index_select(0, index)
            if labels is not None:
                lmask = from_buffer.view(n, *([1] * len(self.label_shape)))
                out_labels = torch.where(lmask, out_labels, labels)
        return ReplaySample(x, out_labels, index, from_buffer)

    def _matching_slots(self, labels: Tensor, generator) -> tuple[Tensor, Tensor]:
        """Per row, a uniformly drawn filled, labelled slot whose label equals the row's (int64 ``[n]``),
        and whether any slot matched (bool ``[n]``)."""
        n, size = labels.shape[0], self._size
        if size == 0:
            return torch.zeros(n, dtype=torch.int64, device=self.device), torch.zeros(n, dtype=torch.bool,
                                                                                      device=self.device)
        stored = self.labels[:size].reshape(1, size, -1)
        match = (stored == labels.reshape(n, 1, -1)).all(dim=2) & self.labelled[:size].unsqueeze(0)
        keys = torch.rand((n, size), device=self.device, generator=generator)
        keys = torch.where(match, keys, torch.full_like(keys, -1.0))
        return keys.argmax(dim=1), match.any(dim=1)

    def _fresh(self, n: int, init, generator) -> Tensor:
        if init is None:
            lo, hi = self.value_range
            u = torch.rand((n, *self.shape), device=self.device, generator=generator, dtype=torch.float32)
            return (lo + (hi - lo) * u).to(self.state_dtype)
        t = init(n) if callable(init) else init
        if not isinstance(t, Tensor) or tuple(t.shape) != (n, *self.shape):
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"init must give a Tensor of shape {(n, *self.shape)}, got {got}")
        return t.detach().to(device=self.device, dtype=self.state_dtype)

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The buffer's contents and fill state (tensors stay on the device; ``torch.save`` handles them)."""
        return {"data": self.data, "labels": self.labels, "labelled": self.labelled, "size": self._size,
                "next": self._next,
                "capacity": self.capacity, "shape": self.shape, "dtype": str(self.dtype),
                "value_range": self.value_range}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (from a buffer of the same capacity, shape and dtype)."""
        for k in ("data", "size", "next", "capacity", "shape"):
            if k not in state:
                raise KeyError(f"replay buffer state is missing {k!r}")
        if int(state["capacity"]) != self.capacity or tuple(state["shape"]) != self.shape:
            raise ValueError(f"replay buffer state holds capacity {state['capacity']} x {tuple(state['shape'])}, "
                             f"this buffer is {self.capacity} x {self.shape}")
        data = state["data"]
        if data.dtype != self.dtype:
            raise ValueError(f"replay buffer state has dtype {data.dtype}, this buffer stores {self.dtype}")
        if (state.get("labels") is None) != (self.labels is None):
            raise ValueError("replay buffer state and this buffer disagree on whether labels are stored")
        if tuple(state.get("value_range", self.value_range)) != self.value_range:
            raise ValueError(f"replay buffer state has value_range {state['value_range']}, this buffer "
                             f"{self.value_range}")
        size, nxt = int(state["size"]), int(state["next"])
        if not (0 <= size <= self.capacity and 0 <= nxt < self.capacity):
            raise ValueError(f"replay buffer state has an invalid fill state (size {size}, next {nxt})")
        self.data.copy_(data)
        if self.labels is not None:
            self.labels.copy_(state["labels"])
            labelled = state.get("labelled")  # states saved before unlabelled slots existed: all labelled
            if labelled is None:
                self.labelled.copy_(torch.arange(self.capacity, device=self.device) < size)
            else:
                self.labelled.copy_(labelled)
        self._size, self._next = size, nxt
