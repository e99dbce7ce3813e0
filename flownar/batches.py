"""Training batches: narration-stream samples encoded for the model, with their frames and DCM expiry positions.

One sample is one sequence (batch 1, as the original); gradient accumulation makes the effective batch. Used by
training (:mod:`flownar.train`) and the decision probe (:func:`flownar.eval.oracle.decision_probe`).
"""

from __future__ import annotations

import torch

from .data.chat import ChatTokenizer
from .data.samples import build_stream_samples
from .models import FlowNarConfig
from .models.masks import sample_expiry


class StreamDataset(torch.utils.data.Dataset):
    """Encoded narration-stream samples of one split, with their frames and DCM expiry positions (``questions``:
    with the world's questions asked in them)."""

    def __init__(
        self,
        data,
        split: str,
        chat: ChatTokenizer,
        config: FlowNarConfig,
        max_num_frames: int,
        seed: int = 0,
        cache_features: bool = True,
        content_weight: float = 1.0,
        questions: bool = False,
    ):
        self.data, self.chat, self.config = data, chat, config
        self.content_weight = content_weight
        self.content_ids = content_token_ids(chat, data) if content_weight != 1.0 else None
        self.samples = build_stream_samples(
            data, split, use_memory=config.use_memory, max_num_frames=max_num_frames, seed=seed, questions=questions
        )
        self.cache = {} if cache_features else None
        self.memory_features: dict[int, torch.Tensor] = {}  # sample index -> what the memory precomputed

    def __len__(self) -> int:
        return len(self.samples)

    def features(self, uid: str) -> torch.Tensor:
        if self.cache is None:
            return self.data.load_features(uid)
        if uid not in self.cache:
            self.cache[uid] = self.data.load_features(uid)
        return self.cache[uid]

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        enc = self.chat.encode(s)
        frames = self.features(s.video_uid)[s.frames.start : s.frames.stop].float()  # (F, N, D)
        expiry = sample_expiry(enc, self.config)
        item = dict(
            input_ids=enc.input_ids[None],
            labels=enc.labels[None],
            frames=frames,
            mem_frame_indices=enc.mem_frame_indices,
            expiry=expiry,
            sample_id=s.sample_id,
        )
        if self.content_ids is not None:
            item["label_weights"] = content_weights(enc.labels, self.content_ids, self.content_weight)[None]
        kind = self.config.memory_kind
        if kind is not None:  # what the memory computes once per sample (Flash Memory: its read-outs), if anything
            if i not in self.memory_features:
                self.memory_features[i] = kind.precompute(self.config, frames, enc.mem_frame_indices)
            if self.memory_features[i] is not None:
                item["memory_features"] = self.memory_features[i]
        return item


def content_token_ids(chat: ChatTokenizer, data) -> torch.Tensor:
    """The token ids of the words that name an action in the embedded world: every word of its verbs and nouns
    (the synthetic card's vocabulary), as the tokenizer splits them after a space. Real data has no such list."""
    card = data.synthetic_card
    if not card or "vocabulary" not in card:
        raise ValueError(
            f"{data.root}: a content-word loss weight needs the synthetic world's vocabulary (embedded data only)"
        )
    words = {w for v in card["vocabulary"]["verbs"] for w in v.split()} | set(card["vocabulary"]["nouns"])
    ids = {i for w in sorted(words) for i in chat.tok(" " + w, add_special_tokens=False)["input_ids"]}
    return torch.tensor(sorted(ids), dtype=torch.long)


def content_weights(labels: torch.Tensor, content_ids: torch.Tensor, weight: float) -> torch.Tensor:
    """(L,) loss weights: ``weight`` where the label is a content word, 1 elsewhere (unlearned positions too)."""
    w = torch.ones(labels.shape, dtype=torch.float32)
    w[torch.isin(labels, content_ids)] = weight
    return w


def model_inputs(batch: dict, device) -> dict:
    out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != "sample_id"}
    return out
