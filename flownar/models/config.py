"""One config for every system: a Llama config plus the streaming-narration fields, selected by ``system``.

The systems (rows of the paper's tables; their records and presets in :mod:`flownar.systems`) differ only in
these fields:

| system          | dcm (visual KV pruned after each narration) | memory (CLAM) | last_k narrations | MoD |
|-----------------|----------------------------------------------|---------------|-------------------|-----|
| videollm-online | no                                           | no            | all               | no  |
| videollm-mod    | no                                           | no            | all               | yes |
| flownar-c       | yes                                          | 20 tokens     | 10                | no  |
| flownar         | yes                                          | 20 tokens     | all               | no  |
| dcm-only        | yes                                          | no            | all               | no  |
| flash-vstream   | yes                                          | Flash Memory  | all               | no  |
| streaming-vlm   | no: a window of the last 32 frames instead   | no            | 10                | no  |

``flash-vstream`` is this package's adaptation (Flash-VStream answers questions; it does not narrate): FlowNar with
its memory block read from Flash-VStream-Qwen's Flash Memory (:mod:`flownar.models.flash_memory`: a weighted k-means
synopsis of every frame so far + the real frames nearest the heaviest clusters, non-parametric) instead of CLAM,
at CLAM's token budget (10 centroids + 1 frame of 10 tokens = 20 tokens).

``streaming-vlm`` is this package's adaptation of StreamingVLM's cache (Xu et al., arXiv 2510.09608; it is not in the
FlowNar paper): attention sinks (the prompt: system line, frame 0's neighbours, the instruction; never dropped) +
a window of the most recent ``vision_window`` frames (32 = StreamingVLM's 16 one-second chunks at FlowNar-Data's
2 fps) + a window of recent text (the last ``last_k_narration`` = 10 narrations, FlowNar-C's window: whole
narrations, so the window never cuts a sentence and the system differs from FlowNar-C only in its visual context),
nothing pruned at narrations, and *contiguous* positions (``contiguous_positions``: the kept tokens are re-indexed
0, 1, 2, ... after every eviction, StreamingVLM's ``pos_mode="shrink"``): keys are cached un-rotated and rotated at
their current index at every step. StreamingVLM's own cache differs: it also keeps the first 512 tokens of its old
replies as a text sink, the replies of the last 16 s in place plus the 512 most recent older tokens, drops the
instruction with the first round, and uses Qwen2.5-VL's 3-D positions (docs/systems.md lists every difference).
"""

from __future__ import annotations

import math

from transformers import LlamaConfig

from .. import systems
from ..layout import CachePolicy
from .memory import MemoryKind, memory_kind

FLOWNAR_FORMAT_VERSION = 1  # bump when a checkpoint of an older version can no longer be read as is


class FlowNarConfig(LlamaConfig):
    """Llama config + connector, placeholders, CLAM, DCM, last-k and MoD settings.

    Args (beyond LlamaConfig):
        system: the system's key in :mod:`flownar.systems` (its preset); recorded in checkpoints so they cannot
            be loaded as another system.
        vision_hidden_size: feature dim of the frame tokens (from the data: 1024 for SigLIP-L).
        frame_num_tokens: tokens per frame (from the data: 10 = 1 CLS + 3x3).
        v_placeholder_id, m_placeholder_id: ids of ``<v>`` and ``<m>`` (from the tokenizer; may exceed vocab_size,
            the embedding lookup clamps them and the positions are overwritten).
        silent_id, speak_id: the stay-silent (frame separator) and speak (run-closing) token ids.
        stream_loss_weight: weight of the frame-decision positions in the loss (1.0 in the paper).
        num_m_tokens: CLAM queries = memory tokens per block. clam_heads, clam_expand_k, clam_dropout: CLAM sizes.
        clam_gate_bias_init: initial bias of CLAM's forget gate (deviation: 5.0, a long memory from the start; the
            original's default init forgets about half the state per token; None restores it).
        memory_readout: ``"segment_end"`` (read CLAM after the previous segment's last frame token: what streaming
            can see) or ``"frame_cls"`` (the original's read-out at the narration frame's first token, for its
            released checkpoints).
        memory: which memory the ``<m>`` block reads (systems with memory): ``"clam"`` or ``"flash"`` (Flash
            Memory; ``flash_detail_frames`` retrieved frames (default: 1 if the block has room) + ``flash_clusters``
            CSM centroids (default: the rest of the ``num_m_tokens`` block); ``flash_low`` the low-resolution
            feature: ``"cls"`` or ``"mean"``); from the preset unless given.
        vision_window: keep the frame tokens of only the most recent ``vision_window`` frames (a frame's tokens
            leave the cache when frame ``f + vision_window`` arrives; None = no window); from the preset unless given.
        contiguous_positions: RoPE positions are the tokens' current indices in the cache (re-indexed after every
            eviction, StreamingVLM) instead of positions that keep counting; from the preset unless given.
        mod_capacity, mod_every: VideoLLM-MoD: fraction of each frame's vision tokens computed in the routed layers,
            and which layers are routed (every ``mod_every``-th, starting at layer 1).
    """

    model_type = "flownar"

    def __init__(
        self,
        system: str = "videollm-online",
        vision_hidden_size: int = 1024,
        frame_num_tokens: int = 10,
        v_placeholder_id: int = -1,
        m_placeholder_id: int = -1,
        silent_id: int = -1,
        speak_id: int = -1,
        stream_loss_weight: float = 1.0,
        dcm: bool | None = None,
        use_memory: bool | None = None,
        last_k_narration: int | None = -1,
        mod: bool | None = None,
        num_m_tokens: int = 20,
        clam_heads: int = 8,
        clam_expand_k: float = 0.5,
        clam_dropout: float = 0.1,
        clam_gate_bias_init: float | None = 5.0,
        memory_readout: str = "segment_end",
        memory: str | None = None,
        flash_clusters: int | None = None,
        flash_detail_frames: int | None = None,
        flash_low: str = "cls",
        vision_window: int | None = -1,
        contiguous_positions: bool | None = None,
        mod_capacity: float = 0.2,
        mod_every: int = 2,
        flownar_format_version: int = FLOWNAR_FORMAT_VERSION,
        **kwargs,
    ):
        record = systems.SYSTEMS.get(system)
        if record is None or not record.learned:
            raise ValueError(f"unknown system {system!r}; expected one of {systems.learned()}")
        preset = record.preset
        self.system = system
        # preset values unless explicitly overridden (None / -1 = take the preset's)
        # (a field the preset leaves out: no DCM, no memory, every narration kept, no MoD)
        self.dcm = preset.get("dcm", False) if dcm is None else bool(dcm)
        self.use_memory = preset.get("use_memory", False) if use_memory is None else bool(use_memory)
        self.last_k_narration = preset.get("last_k_narration") if last_k_narration == -1 else last_k_narration
        self.mod = preset.get("mod", False) if mod is None else bool(mod)
        self.vision_hidden_size = vision_hidden_size
        self.frame_num_tokens = frame_num_tokens
        self.v_placeholder_id = v_placeholder_id
        self.m_placeholder_id = m_placeholder_id
        self.silent_id = silent_id
        self.speak_id = speak_id
        self.stream_loss_weight = stream_loss_weight
        self.num_m_tokens = num_m_tokens
        self.clam_heads = clam_heads
        self.clam_expand_k = clam_expand_k
        self.clam_dropout = clam_dropout
        self.clam_gate_bias_init = clam_gate_bias_init
        if memory_readout not in ("segment_end", "frame_cls"):
            raise ValueError(f"memory_readout must be 'segment_end' or 'frame_cls', got {memory_readout!r}")
        self.memory_readout = memory_readout
        self.memory = preset.get("memory", "clam") if memory is None else memory
        if flash_detail_frames is None:  # one retrieved frame when the memory block has room for it and a centroid
            flash_detail_frames = 1 if num_m_tokens > frame_num_tokens else 0
        if flash_clusters is None:  # the rest of the memory block after the retrieved frames
            flash_clusters = max(1, num_m_tokens - flash_detail_frames * frame_num_tokens)
        self.flash_clusters, self.flash_detail_frames, self.flash_low = flash_clusters, flash_detail_frames, flash_low
        self.vision_window = preset.get("vision_window") if vision_window == -1 else vision_window
        self.contiguous_positions = (
            preset.get("contiguous_positions", False) if contiguous_positions is None else bool(contiguous_positions)
        )
        self.mod_capacity = mod_capacity
        self.mod_every = mod_every
        self.flownar_format_version = flownar_format_version
        self._check_combination()
        super().__init__(**kwargs)

    def _check_combination(self) -> None:
        """Refuse fields that do not work together (the memory's own conditions, the cache policy's)."""
        kind = memory_kind(self.memory)  # a clear error for an unknown memory
        if self.use_memory:
            kind.check(self)
        self.cache_policy  # noqa: B018  (validates the policy's fields)
        if self.vision_window is not None and self.use_memory:
            raise ValueError("a vision window has no memory blocks (they belong to DCM's segments): use_memory=False")
        if self.contiguous_positions and self.mod:
            raise ValueError(
                "contiguous positions with MoD's routed layers (each with its own cache) are not supported"
            )

    @property
    def display_name(self) -> str:
        return systems.display_name(self.system)

    @property
    def cache_policy(self) -> CachePolicy:
        """What leaves the KV cache and how positions count (:class:`flownar.layout.CachePolicy`): every form of
        the rule (engine, simulator, teacher-forced mask, look-ahead) asks this object."""
        return CachePolicy(
            prune_at_narration=self.dcm,
            last_k_narrations=self.last_k_narration,
            vision_window=self.vision_window,
            contiguous_positions=self.contiguous_positions,
        )

    # ------------------------------------------------------------------ derived facts (computed here only)
    @property
    def attention_head_dim(self) -> int:
        """Per-head query/key/value width (Llama-3's configs give ``head_dim``; otherwise hidden / heads)."""
        return getattr(self, "head_dim", None) or self.hidden_size // self.num_attention_heads

    @property
    def flash_config(self):
        """The :class:`~flownar.models.flash_memory.FlashMemoryConfig` of the flash fields."""
        from .flash_memory import FlashMemoryConfig

        return FlashMemoryConfig(
            clusters=self.flash_clusters, detail_frames=self.flash_detail_frames, low=self.flash_low
        )

    @property
    def memory_kind(self) -> MemoryKind | None:
        """The memory the ``<m>`` blocks read (:mod:`flownar.models.memory`), None for a system without memory."""
        return memory_kind(self.memory) if self.use_memory else None

    @property
    def routed_layers(self) -> tuple[int, ...]:
        """VideoLLM-MoD's routed layers: every ``mod_every``-th, starting at layer ``mod_every - 1`` (none without
        MoD)."""
        if not self.mod:
            return ()
        return tuple(i for i in range(self.num_hidden_layers) if i % self.mod_every == self.mod_every - 1)

    @property
    def mod_tokens_per_frame(self) -> int:
        """Vision tokens of each frame that a routed layer computes: ``ceil(mod_capacity x tokens)``, at least 1
        (all of them without MoD)."""
        if not self.mod:
            return self.frame_num_tokens
        return max(1, math.ceil(self.mod_capacity * self.frame_num_tokens))

    def kv_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """One token's keys and values in every layer: 2 x layers x kv_heads x head_dim x bytes."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.attention_head_dim * bytes_per_element


# LLM shapes of the paper's models (public model cards); vocab 128256, rope as Llama-3.x.
REAL_LLMS: dict[str, dict] = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
        head_dim=64,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rope_scaling=dict(
            rope_type="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        tie_word_embeddings=False,
        head_dim=128,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    ),
}
TINY_SIZES = ("micro", "mini", "tiny", "small")


def tiny_llama_kwargs(vocab_size: int, size: str = "tiny") -> dict:
    """LlamaConfig fields of the from-scratch models of the embedded default (a few million parameters)."""
    sizes = {
        # hidden, layers, heads, kv heads, intermediate
        "micro": (64, 2, 4, 2, 172),  # tests
        "mini": (128, 4, 4, 2, 344),  # the embedded default (CPU)
        "tiny": (256, 4, 4, 4, 688),
        "small": (512, 8, 8, 8, 1376),
    }
    h, n, a, kv, inter = sizes[size]
    return dict(
        vocab_size=vocab_size,
        hidden_size=h,
        num_hidden_layers=n,
        num_attention_heads=a,
        num_key_value_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=131072,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
