"""The key/value stores a stream runs on: the preallocated cache with in-place compaction (the fast path) and
transformers' ``DynamicCache`` behind the same interface (the reference), with the tags that say what each cached
token is.

Why not transformers' ``DynamicCache``: it grows by ``torch.cat`` of the whole cache at every step (a copy that
costs more than the step itself once the cache is long) and DCM's deletions re-allocate it with ``index_select``.
Here each layer owns one buffer ``(1, kv_heads, capacity, head_dim)``:

* ``append`` writes the new keys/values at ``[length, length + n)`` in place and returns views of ``[0, length + n)``;
  the buffer doubles only when it is full (amortised O(1); counted in ``reallocations``);
* ``compact(keep)`` removes cached tokens in place: only the kept tokens *after the first removed one* move, so
  DCM's pruning after a narration moves just the narration text that follows the pruned segment.
"""

from __future__ import annotations

import numpy as np
import torch

from .steps import forward_step


class StaticKVCache:
    """Per-layer preallocated keys/values ``(1, kv_heads, capacity, head_dim)`` with a fill length per layer."""

    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        *,
        capacity: int = 1024,
        device=None,
        dtype=torch.float32,
        growth: float = 2.0,
        weights=None,
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.kv_heads, self.head_dim, self.growth = kv_heads, head_dim, growth
        self.device, self.dtype = torch.device(device or "cpu"), dtype
        self.keys = [self._empty(capacity) for _ in range(num_layers)]
        self.values = [self._empty(capacity) for _ in range(num_layers)]
        self.lengths = [0] * num_layers
        self.reallocations = 0
        self.weights = weights  # the model's StepWeights for forward(); None: call the layers' modules

    @classmethod
    def for_model(
        cls, config, *, capacity: int = 1024, device=None, dtype=torch.float32, weights=None
    ) -> "StaticKVCache":
        return cls(
            config.num_hidden_layers,
            config.num_key_value_heads,
            config.attention_head_dim,
            capacity=capacity,
            device=device,
            dtype=dtype,
            weights=weights,
        )

    # the KVStore interface (what the Narrator uses)
    def forward(
        self, model, embeds: torch.Tensor, start: int, frame_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the decoder on new tokens at positions ``start, start + 1, ...``, caching them here
        (:func:`forward_step`, with the :class:`StepWeights` given at construction, if any)."""
        return forward_step(model, embeds, None, self, frame_positions, weights=self.weights, start=start)

    def delete(self, keep: np.ndarray) -> None:
        self.compact(keep)

    def _empty(self, capacity: int) -> torch.Tensor:
        """A zero-filled buffer. Not ``torch.empty``: the captured step attends over the whole capacity with the
        unused slots masked, and a masked slot holding a NaN bit pattern still poisons the output (its softmax weight
        is 0, and 0 x NaN = NaN)."""
        return torch.zeros(1, self.kv_heads, capacity, self.head_dim, device=self.device, dtype=self.dtype)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def __len__(self) -> int:
        return max(self.lengths)

    def reserve(self, layer: int, needed: int) -> None:
        """Make room for ``needed`` tokens in ``layer`` (grows by ``growth`` x, copying only the filled part)."""
        cap = self.keys[layer].shape[2]
        if needed <= cap:
            return
        new_cap = max(needed, int(cap * self.growth))
        n = self.lengths[layer]
        for bufs in (self.keys, self.values):
            new = self._empty(new_cap)
            new[:, :, :n] = bufs[layer][:, :, :n]
            bufs[layer] = new
        self.reallocations += 1

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` ``(1, kv_heads, n, head_dim)`` after the cached tokens; return views of all of them."""
        n0, n = self.lengths[layer], k.shape[2]
        self.reserve(layer, n0 + n)
        K, V = self.keys[layer], self.values[layer]
        K[:, :, n0 : n0 + n] = k
        V[:, :, n0 : n0 + n] = v
        self.lengths[layer] = n0 + n
        return K[:, :, : n0 + n], V[:, :, : n0 + n]

    def compact(self, keep: np.ndarray) -> int:
        """Remove the cached tokens where ``keep`` (bool, one per cached token) is False, in every layer, in place.

        All layers must hold the same tokens (true for every system with deletions). Returns how many were removed.
        """
        n = self.lengths[0]
        if any(length != n for length in self.lengths) or keep.shape != (n,):
            raise ValueError(f"compact: keep has shape {keep.shape} for layer lengths {sorted(set(self.lengths))}")
        dropped = np.flatnonzero(~keep)
        if dropped.size == 0:
            return 0
        first = int(dropped[0])
        tail = np.flatnonzero(keep[first:]) + first  # kept tokens that have to move down
        m = tail.size
        if m:
            idx = torch.from_numpy(tail).to(self.device, non_blocking=True)
            for bufs in (self.keys, self.values):
                for buf in bufs:
                    # index_select gathers into a temporary of m tokens, so source and target may overlap
                    buf[:, :, first : first + m] = buf[:, :, :n].index_select(2, idx)
        self.lengths = [first + m] * len(self.lengths)
        return int(dropped.size)

    def used_bytes(self) -> int:
        """Bytes of the cached (valid) keys and values: sum over layers of 2 x length x kv_heads x head_dim x size."""
        per = self.kv_heads * self.head_dim * self.keys[0].element_size() * 2
        return sum(self.lengths) * per

    def allocated_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.keys + self.values)


class SlotTags:
    """What each cached token is (kind code, segment id, narration id, frame index): numpy arrays that grow and
    compact with the cache, so the cache policies' deletions are vectorised rather than Python loops over the
    cache."""

    KINDS = ("other", "frames", "memory", "narration", "question")
    FIELDS = ("kind", "segment", "narration", "frame")

    def __init__(self, capacity: int = 1024):
        self.kind = np.zeros(capacity, np.int8)
        self.segment = np.full(capacity, -1, np.int64)
        self.narration = np.full(capacity, -1, np.int64)
        self.frame = np.full(capacity, -1, np.int64)  # the frame being fed when the token came (read for "frames")
        self.n = 0

    def add_codes(self, kinds: np.ndarray, segments, narrations, frames=-1) -> None:
        """Append tags: ``kinds`` as codes (indices into :attr:`KINDS`), one segment, narration id and frame per
        token (scalars broadcast)."""
        m = len(kinds)
        if self.n + m > self.kind.size:
            cap = max(self.n + m, 2 * self.kind.size)
            for name in self.FIELDS:
                old = getattr(self, name)
                new = np.full(cap, -1 if name != "kind" else 0, old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        sl = slice(self.n, self.n + m)
        self.kind[sl] = kinds
        self.segment[sl] = segments
        self.narration[sl] = narrations
        self.frame[sl] = frames
        self.n += m

    def keep_mask(
        self, *, segment: int | None = None, narration: int | None = None, frames_upto: int | None = None
    ) -> np.ndarray:
        """Everything but the tokens of ``segment``, of ``narration``, and of the frames ``<= frames_upto``."""
        keep = np.ones(self.n, bool)
        if segment is not None:
            keep &= self.segment[: self.n] != segment
        if narration is not None:
            keep &= self.narration[: self.n] != narration
        if frames_upto is not None:
            keep &= ~((self.kind[: self.n] == 1) & (self.frame[: self.n] <= frames_upto))
        return keep

    def compact(self, keep: np.ndarray) -> None:
        m = int(keep.sum())
        for name in self.FIELDS:
            arr = getattr(self, name)
            arr[:m] = arr[: self.n][keep]
        self.n = m

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.kind[: self.n], minlength=len(self.KINDS))
        return {k: int(c[i]) for i, k in enumerate(self.KINDS) if c[i]}


class HFCacheStore:
    """transformers' ``DynamicCache`` behind the same interface as :class:`StaticKVCache`: transformers' own forward
    on a growing cache that deletions rebuild with ``index_select`` (what the original code does). The reference
    engine of the logits tests and the baseline of the speed benchmark."""

    def __init__(self, config):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=config)

    def forward(
        self, model, embeds: torch.Tensor, start: int, frame_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        from ..models.hf_compat import CACHE_ARG

        position_ids = torch.arange(start, start + embeds.shape[1], device=embeds.device)[None]
        with model.streaming_routing(frame_positions):
            out = model.model(
                inputs_embeds=embeds, position_ids=position_ids, use_cache=True, **{CACHE_ARG: self.cache}
            )
        return out.last_hidden_state

    def delete(self, keep: np.ndarray) -> None:
        idx = None
        for layer in self.cache.layers:
            if idx is None:
                idx = torch.from_numpy(np.flatnonzero(keep)).to(layer.keys.device)
            layer.keys = layer.keys.index_select(-2, idx)
            layer.values = layer.values.index_select(-2, idx)

    def used_bytes(self) -> int:
        return sum(
            l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size()
            for l in self.cache.layers
            if getattr(l, "keys", None) is not None and l.keys.numel()
        )

    def allocated_bytes(self) -> int | None:
        return None  # transformers owns the allocation


#: The key/value stores a :class:`~flownar.stream.Narrator` can run on (``engine=``).
ENGINES = ("static", "hf")


def make_kv_store(engine: str, config, *, capacity: int = 2048, device=None, dtype=torch.float32, weights=None):
    """A fresh key/value store: ``"static"`` (:class:`StaticKVCache`, the fast path, on ``weights`` if given) or
    ``"hf"`` (:class:`HFCacheStore`). Both implement ``forward(model, embeds, start, frame_positions) -> hidden``
    (new tokens at positions ``start, start + 1, ...``), ``delete(keep)``, ``used_bytes()`` and
    ``allocated_bytes()``."""
    if engine == "static":
        return StaticKVCache.for_model(config, capacity=capacity, device=device, dtype=dtype, weights=weights)
    if engine == "hf":
        return HFCacheStore(config)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
