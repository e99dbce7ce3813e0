"""FlowNarForCausalLM: a Llama causal LM that reads frame features, for every system of the paper.

Pieces (reference sections 3-6):

* connector: ``Linear(D, H) -> GELU -> Linear(H, H)`` maps each frame token (and each CLAM memory token) from the
  feature dim D to the LLM hidden size H;
* placeholder embedding: ``<v>`` positions take the projected frame tokens (frame-major), ``<m>`` positions the
  projected CLAM read-outs; token ids beyond the vocabulary are clamped before the lookup (they are overwritten);
* CLAM (:mod:`flownar.models.clam`), run over the clip's frame tokens flattened frame-major, read out once per
  memory block after the previous segment's last frame token (or, for the original's checkpoints, at the
  narration frame's CLS token);
* DCM and FlowNar-C's narration window as expiry positions (:mod:`flownar.models.masks`), applied by an exact
  block attention (:mod:`flownar.models.dcm_attention`: each block of queries attends to the keys it can see) with
  sdpa, or as a 4-D attention mask otherwise;
* VideoLLM-MoD's routed layers (:class:`FlowNarDecoderLayer`);
* the loss: token cross-entropy on the pre-shifted labels, frame-decision positions (input ``<v>``) weighted by
  ``stream_loss_weight``, divided by the number of labelled tokens.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from .config import FlowNarConfig
from .dcm_attention import dcm_blocks, register
from .hf_compat import CACHE_ARG, CACHE_FIELD, find_cache
from .masks import additive_mask, visibility

DCM_ATTENTION = register()


class Connector(nn.Module):
    """Frame-feature projector: Linear -> GELU -> Linear (with biases)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class FlowNarDecoderLayer(LlamaDecoderLayer):
    """A Llama decoder layer that can be routed as in VideoLLM-MoD.

    When routed (``router`` set) and the forward carries frame positions, only the top ``capacity`` share of each
    frame's vision tokens (by a learned linear router on the layer input) go through attention and MLP with the
    text tokens; the other vision tokens skip the layer unchanged, as queries and as keys. The processed vision
    tokens' updates are scaled by the router's sigmoid weight, which is what lets the router learn.

    Inferred where the VideoLLM-MoD paper is not explicit to us: the router is a single linear layer on the layer
    input, the weight is a sigmoid of its score, selection is per frame (a fixed ``ceil(capacity * tokens)``
    tokens of every frame, which keeps streaming causal), the routed layers are the odd ones (every other layer,
    starting at layer 1), and there is no auxiliary router loss.
    """

    def __init__(self, config: FlowNarConfig, layer_idx: int, routed: bool = False):
        super().__init__(config, layer_idx)
        self.router = nn.Linear(config.hidden_size, 1, bias=False) if routed else None
        self.k = config.mod_tokens_per_frame  # vision tokens of each frame this layer computes
        self.frame_positions: torch.Tensor | None = None  # (F, N), set by the model for one forward

    def route(self, hidden_states: torch.Tensor, fp: torch.Tensor | None):
        """Indices of the tokens this layer computes (text + each frame's top-``k`` vision tokens), the selected
        vision positions and their router weights. Training and both streaming engines route through here."""
        L = hidden_states.shape[1]
        device = hidden_states.device
        if fp is None or fp.numel() == 0:
            return torch.arange(L, device=device), None, None
        F_, N = fp.shape
        scores = self.router(hidden_states[0, fp.flatten()]).view(F_, N)  # (F, N)
        k = self.k
        top = scores.topk(k, dim=1)
        selected = fp.gather(1, top.indices).flatten()  # (F*k,) token positions that are computed
        weight = torch.sigmoid(top.values).flatten().to(hidden_states.dtype)  # (F*k,)
        keep = torch.ones(L, dtype=torch.bool, device=device)
        keep[fp.flatten()] = False
        keep[selected] = True
        count = L - F_ * N + F_ * k  # known on the host: no nonzero(), so no device sync
        idx = torch.argsort((~keep).to(torch.int8), stable=True)[:count]  # kept positions, ascending
        return idx, selected, weight

    def forward(self, hidden_states, attention_mask=None, position_ids=None, position_embeddings=None, **kwargs):
        # The cache (if any) stays in ``kwargs`` under whatever name this transformers version gives it and is
        # handed on unchanged; it is found by type, so a renamed argument cannot silently turn streaming off.
        fp = self.frame_positions
        cache = find_cache(kwargs)
        streaming = self.router is not None and cache is not None
        if not streaming and (self.router is None or fp is None or fp.numel() == 0):
            return super().forward(
                hidden_states,
                attention_mask=attention_mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        if hidden_states.shape[0] != 1:
            raise NotImplementedError("routed (MoD) layers run on one sequence at a time")
        idx, selected, weight = self.route(hidden_states, fp)
        cos, sin = position_embeddings
        if streaming:
            # this layer's cache holds only the tokens it computed, so it needs its own mask: every cached token
            # is visible, the new ones causally
            past = cache.get_seq_length(self.self_attn.layer_idx)
            q = idx.numel()
            sub_mask = None
            if q > 1:
                allowed = torch.ones(q, past + q, dtype=torch.bool, device=hidden_states.device)
                allowed[:, past:] = torch.tril(allowed[:, past:])
                sub_mask = additive_mask(allowed.cpu(), hidden_states.dtype).to(hidden_states.device)
        else:
            sub_mask = attention_mask[:, :, idx][:, :, :, idx] if attention_mask is not None else None
        sub = super().forward(
            hidden_states[:, idx],
            attention_mask=sub_mask,
            position_ids=position_ids[:, idx] if position_ids is not None else None,
            position_embeddings=(cos[:, idx], sin[:, idx]),
            **kwargs,
        )
        return self.merge(hidden_states, idx, sub, selected, weight)

    @staticmethod
    def merge(hidden_states, idx, sub, selected, weight):
        """The layer's output: computed tokens ``idx`` take ``sub``; the selected vision tokens' updates are scaled by
        their router weight; skipped tokens pass through unchanged."""
        out = hidden_states.clone()
        out[:, idx] = sub
        if selected is not None:
            base = hidden_states[0, selected]
            out[0, selected] = base + weight[:, None] * (out[0, selected] - base)
        return out


@dataclass
class FlowNarOutput(CausalLMOutputWithPast):
    lm_loss: torch.Tensor | None = None  # mean CE over narration-token positions
    stream_loss: torch.Tensor | None = None  # mean CE over frame-decision positions


class FlowNarForCausalLM(LlamaForCausalLM):
    config_class = FlowNarConfig

    def __init__(self, config: FlowNarConfig):
        super().__init__(config)
        if config.mod:
            for i in range(config.num_hidden_layers):
                self.model.layers[i] = FlowNarDecoderLayer(config, i, routed=i in config.routed_layers)
        self.connector = Connector(config.vision_hidden_size, config.hidden_size)
        self.clam = None  # CLAM's parameters (state-dict prefix "clam."), None for the other systems
        kind = config.memory_kind
        module = kind.build(config) if kind is not None else None
        if module is not None:
            for m in module.modules():  # initialised by the memory's own scheme, not HF's generic one
                m._memory_owned = True
            setattr(self, kind.module_name, module)
        self.post_init()
        self._use_dcm_attention()

    def _use_dcm_attention(self) -> None:
        """Where sdpa is asked for, use ``flownar_dcm`` instead: sdpa itself (and sdpa's masks) for every forward,
        except a teacher-forced pass with a DCM mask, which gets the exact block attention
        (:mod:`flownar.models.dcm_attention`). Set once here, never switched during a forward."""
        if self.config._attn_implementation == "sdpa":
            self.config._attn_implementation = DCM_ATTENTION

    def _init_weights(self, module):
        if getattr(module, "_memory_owned", False):  # fresh models, or a memory missing from a Llama checkpoint
            self.config.memory_kind.init_module(module, self.config)
        else:
            super()._init_weights(module)

    # ------------------------------------------------------------------ embeddings
    def frame_embeds(self, frames: torch.Tensor) -> torch.Tensor:
        """(F, N, D) frame features -> (F, N, H) token embeddings."""
        return self.connector(frames.to(self.connector.fc1.weight.dtype))

    def memory_embeds(
        self, frames: torch.Tensor, mem_frame_indices: torch.Tensor, memory_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The memory blocks' embeddings (B, Q, H): the memory's read-out after each block's frame
        (:meth:`flownar.models.memory.MemoryKind.readouts`: CLAM over the clip's frame tokens, frame-major; Flash
        Memory written frame by frame), through the connector. ``memory_features``: what the memory computed
        beforehand for this sample (:meth:`~flownar.models.memory.MemoryKind.precompute`), if anything."""
        dtype = self.connector.fc1.weight.dtype
        mem = self.config.memory_kind.readouts(self, frames, mem_frame_indices, memory_features)  # (B, Q, D)
        return self.connector(mem.to(dtype))  # (B, Q, D) -> (B, Q, H)

    def joint_embed(
        self,
        input_ids: torch.Tensor,
        frames: torch.Tensor | None = None,
        mem_frame_indices: torch.Tensor | None = None,
        memory_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with ``<v>`` / ``<m>`` positions replaced by projected frames / memory
        (``memory_features``: see :meth:`memory_embeds`)."""
        emb = self.model.embed_tokens(input_ids.clamp(max=self.config.vocab_size - 1))
        v_mask = input_ids == self.config.v_placeholder_id
        n_v = int(v_mask.sum())
        if n_v:
            if frames is None or frames.shape[0] * frames.shape[1] != n_v:
                got = None if frames is None else tuple(frames.shape)
                raise ValueError(
                    f"{n_v} <v> tokens but frames of shape {got} "
                    f"({self.config.frame_num_tokens} tokens per frame expected)"
                )
            emb = emb.masked_scatter(
                v_mask[..., None], self.frame_embeds(frames).reshape(-1, emb.shape[-1]).to(emb.dtype)
            )
        m_mask = input_ids == self.config.m_placeholder_id
        n_m = int(m_mask.sum())
        if n_m:
            if not self.config.use_memory:
                raise ValueError(f"{self.config.system}: the input holds <m> tokens but this system has no memory")
            if input_ids.shape[0] != 1:
                raise NotImplementedError("memory (CLAM) inputs are built for one sequence at a time")
            mem = self.memory_embeds(frames, mem_frame_indices, memory_features)  # (B, Q, H)
            if mem.shape[0] * mem.shape[1] != n_m:
                raise ValueError(f"{n_m} <m> tokens but {mem.shape[0]} memory blocks of {mem.shape[1]}")
            emb = emb.masked_scatter(m_mask[..., None], mem.reshape(-1, emb.shape[-1]).to(emb.dtype))
        return emb

    def stream_embed(
        self,
        ids: torch.Tensor,
        frame: torch.Tensor | None = None,
        v: slice | None = None,
        memory: torch.Tensor | None = None,
        m: slice | None = None,
    ) -> torch.Tensor:
        """The streaming form of :meth:`joint_embed` for one chunk of fed tokens: ``ids`` (n,) already clamped to
        the vocabulary; the ``<v>`` run ``v`` takes one frame's tokens ``(N, D)``, the ``<m>`` run ``m`` the CLAM
        read-out ``memory`` ``(Q, D)``; positions are slices known on the host, so nothing waits for the device.
        Returns (n, H)."""
        emb = self.model.embed_tokens(ids)
        if v is not None:
            emb[v] = self.frame_embeds(frame.to(emb.device)).to(emb.dtype)
        if m is not None:
            emb[m] = self.connector(memory.to(emb.dtype)).to(emb.dtype)
        return emb

    def stream_embed_many(self, chunks: list[tuple]) -> list[torch.Tensor]:
        """:meth:`stream_embed` of several chunks ``(ids, frame, v, memory, m)`` (several streams' steps) with one
        embedding lookup for all ids and one connector call for all frames. Returns each chunk's (n, H)."""
        emb = self.model.embed_tokens(torch.cat([c[0] for c in chunks]))  # (sum n, H)
        sizes = [c[0].shape[0] for c in chunks]
        offsets = [0, *accumulate(sizes)]
        with_frame = [i for i, c in enumerate(chunks) if c[2] is not None]
        if with_frame:
            frames = torch.stack([chunks[i][1] for i in with_frame]).to(emb.device)  # (F, N, D)
            fe = self.frame_embeds(frames).to(emb.dtype)  # (F, N, H)
            for j, i in enumerate(with_frame):
                v = chunks[i][2]
                emb[offsets[i] + v.start : offsets[i] + v.stop] = fe[j]
        for i, (_, _, _, memory, m) in enumerate(chunks):
            if m is not None:
                emb[offsets[i] + m.start : offsets[i] + m.stop] = self.connector(memory.to(emb.dtype)).to(emb.dtype)
        return list(emb.split(sizes))

    def _routing(self, input_ids: torch.Tensor | None):
        """Tell MoD layers where each frame's vision tokens are, for one teacher-forced forward."""
        fp = None
        if self.config.mod and input_ids is not None and input_ids.shape[0] == 1:
            pos = (input_ids[0] == self.config.v_placeholder_id).nonzero().flatten()
            fp = pos.view(-1, self.config.frame_num_tokens)
        return self.streaming_routing(fp)

    @contextmanager
    def streaming_routing(self, frame_positions: torch.Tensor | None):
        """Where the vision tokens of the tokens being fed are, (F, N) positions within them (None: no routing)."""
        routed = [l for l in self.model.layers if getattr(l, "router", None) is not None]
        for l in routed:
            l.frame_positions = frame_positions
        try:
            yield
        finally:
            for l in routed:
                l.frame_positions = None

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids=None,
        frames=None,
        mem_frame_indices=None,
        expiry=None,
        memory_features=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        cache=None,
        label_weights=None,
        **kwargs,
    ) -> FlowNarOutput:
        """
        Args:
            input_ids: (1, L) token ids with ``<v>``/``<m>`` placeholders (B > 1 only without memory).
            frames: (F, N, D) features of the frames whose ``<v>`` tokens appear in ``input_ids``, in order.
            mem_frame_indices: (B,) clip-relative frame after which each memory block reads CLAM.
            memory_features: (B, Q, D) Flash Memory read-outs computed beforehand (flash-vstream; optional).
            expiry: (L,) the expiry positions of the system's cache policy (:func:`flownar.models.masks.
                sample_expiry`): exact block attention, or a 4-D mask for MoD. None = causal. With contiguous
                positions (streaming-vlm) the positions follow from it (each token's index among the visible ones).
            labels: (1, L) pre-shifted labels (``labels[i]`` is the target of position i), -100 = not learned.
            label_weights: (1, L) extra loss weight per position (the embedded recipe's content-word weight,
                :func:`flownar.batches.content_weights`); None = 1 everywhere.
            cache / past_key_values: a transformers ``Cache`` (either name; see :mod:`flownar.models.hf_compat`).
        """
        past_key_values = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            inputs_embeds = self.joint_embed(input_ids, frames, mem_frame_indices, memory_features)
        if expiry is not None:
            if attention_mask is not None:
                raise ValueError("pass either expiry or attention_mask")
            attention_mask, position_ids = self._expiry_attention(
                expiry, inputs_embeds, position_ids, past_key_values, kwargs
            )
        if use_cache is None and past_key_values is None:
            use_cache = False  # a teacher-forced pass needs no cache (the streaming engine passes its own)
        with self._routing(input_ids):
            out = self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                **{CACHE_ARG: past_key_values},
                **kwargs,
            )
        hidden = out.last_hidden_state
        if labels is None and isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = lm_loss = stream_loss = None
        if labels is not None:
            loss, lm_loss, stream_loss = self.streaming_loss(logits, labels, input_ids, label_weights)
        return FlowNarOutput(
            loss=loss,
            logits=logits,
            lm_loss=lm_loss,
            stream_loss=stream_loss,
            **{CACHE_FIELD: getattr(out, CACHE_FIELD)},
        )

    def _expiry_attention(self, expiry, inputs_embeds, position_ids, past_key_values, kwargs):
        """How a teacher-forced pass sees the cache policy's expiry positions: the exact block attention over each
        query block's visible keys (``dcm_blocks`` in ``kwargs``; no L x L mask), or a 4-D additive mask (MoD, a
        batch, a cache). Returns (attention_mask, position_ids)."""
        if not (
            self.config._attn_implementation == DCM_ATTENTION
            and not self.config.mod
            and inputs_embeds.shape[0] == 1
            and past_key_values is None
        ):
            if self.config.contiguous_positions:
                raise NotImplementedError(
                    f"{self.config.system}: contiguous positions need sdpa (the block attention), one sequence, no "
                    "cache"
                )
            mask = additive_mask(visibility(expiry.cpu()), inputs_embeds.dtype).to(inputs_embeds.device)
            return mask, position_ids
        kwargs["dcm_blocks"] = blocks = dcm_blocks(expiry.cpu())
        if self.config.contiguous_positions:
            # positions are indices among the visible tokens: all position ids 0 (no rotation in the layers), each
            # block rotates its gathered keys and queries (dcm_attention.dcm_sdpa)
            if position_ids is not None:
                raise ValueError("contiguous positions are derived from the expiry; pass no position_ids")
            L = inputs_embeds.shape[1]
            position_ids = torch.zeros(1, L, dtype=torch.long, device=inputs_embeds.device)
            most = max(keys.numel() for _, _, keys in blocks)
            table = torch.arange(most, device=inputs_embeds.device)[None]
            kwargs["dcm_rope"] = self.model.rotary_emb(inputs_embeds, table)  # (1, most, hd) x 2
        return None, position_ids

    def streaming_loss(self, logits, labels, input_ids, label_weights=None):
        """sum(w * CE) / #labelled, with w = stream_loss_weight on <v> inputs and 1 elsewhere (paper Eq. 5), times
        ``label_weights`` where given (ours: the embedded recipe weights the words that name the action)."""
        ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
        learned = labels.flatten() != -100
        is_v = (input_ids.flatten() == self.config.v_placeholder_id) & learned
        is_lm = learned & ~is_v
        w = torch.where(
            is_v, torch.as_tensor(self.config.stream_loss_weight, dtype=ce.dtype, device=ce.device), torch.ones_like(ce)
        )
        if label_weights is not None:
            w = w * label_weights.flatten().to(w.dtype)
        n = learned.sum().clamp(min=1)
        loss = (w * ce).sum() / n
        lm = ce[is_lm].mean() if is_lm.any() else ce.new_zeros(())
        st = ce[is_v].mean() if is_v.any() else ce.new_zeros(())
        return loss, lm.detach(), st.detach()
