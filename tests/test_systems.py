"""A system is one record (flownar.systems): names, colour, preset, its cache policy derived from the preset.

The last test defines a system here, outside the package, by registering one record, and runs it through every
path a system takes: training (smoke), the streaming engine (self-conditioned narration and scoring, the table),
the teacher-forced pass (logits equal to the engine's), the simulator (cache equal to the engine's) and `flownar
bench`, with no edit to any file under flownar/.
"""

from pathlib import Path

import pytest
import torch

from flownar import systems
from flownar.errors import FlowNarError
from flownar.layout import CachePolicy
from flownar.models.memory import MemoryKind, StreamMemory
from flownar.systems import System, register

PAPER_ORDER = ["videollm-online", "videollm-mod", "flownar-c", "flownar", "dcm-only", "flash-vstream", "streaming-vlm"]


def test_the_registry_in_table_order_with_the_tables_names():
    assert systems.learned() == PAPER_ORDER
    assert systems.select("all") == systems.select("") == PAPER_ORDER
    assert systems.select("flownar, videollm-online") == ["flownar", "videollm-online"]
    with pytest.raises(FlowNarError, match="unknown system 'flownar-x'.*videollm-online"):
        systems.select("flownar,flownar-x")
    with pytest.raises(FlowNarError, match="reference row"):
        systems.select("world-oracle")
    # the names every committed table is written with
    assert systems.display_name("dcm-only") == "DCM only (no CLAM)"
    assert systems.legend_name("flash-vstream") == "Flash-VStream memory (ours)"
    assert systems.display_name("world-oracle").startswith("World oracle")
    assert systems.key_of("FlowNar-C") == "flownar-c" and systems.key_of("flownar") == "flownar"
    # colours: matplotlib's tab10 (its default cycle), in table order (every figure uses these)
    import matplotlib

    tab10 = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
    assert [systems.colour(s) for s in PAPER_ORDER] == tab10[: len(PAPER_ORDER)]


def test_derived_facts_come_from_the_cache_policy():
    policy = {s: systems.get(s).policy for s in systems.learned()}
    assert [s for s, p in policy.items() if p.bounded] == ["flownar-c", "streaming-vlm"]
    assert [s for s, p in policy.items() if p.bounded_vision] == [
        "flownar-c",
        "flownar",
        "dcm-only",
        "flash-vstream",
        "streaming-vlm",
    ]
    assert not policy["videollm-online"].evicts and policy["flownar"].evicts
    assert systems.get("flash-vstream").built_from == ("flownar",) and not systems.get("flash-vstream").paper
    # the config derives the same policy from its fields (and overrides reach it)
    from flownar.efficiency.accounting import bench_chat, bench_config

    chat = bench_chat(frame_tokens=10, memory_tokens=4)
    assert bench_config("streaming-vlm", "micro", chat, vision_dim=16).cache_policy == policy["streaming-vlm"]
    with pytest.raises(ValueError, match="two cache policies"):
        CachePolicy(prune_at_narration=True, vision_window=4)


def test_a_record_is_checked_when_registered():
    with pytest.raises(ValueError, match="unknown preset fields"):
        System("x", "X", "#000000", dict(dcm=True, kv_budget=3))
    with pytest.raises(ValueError, match="already registered"):
        register(System("flownar", "FlowNar again", "#000000", dict(dcm=True)))
    with pytest.raises(ValueError, match="built from 'nothing'"):
        register(System("y", "Y", "#000000", dict(dcm=True), built_from=("nothing",)))
    assert "x" not in systems.SYSTEMS and "y" not in systems.SYSTEMS


# ---------------------------------------------------------------------------------------------- a new system
NEW = System(
    "window8-k3",
    "Window of 8 frames, last 3 narrations (a test's system)",
    "#17becf",
    dict(dcm=False, use_memory=False, last_k_narration=3, mod=False, vision_window=8),
)


@pytest.fixture
def new_system(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWNAR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWNAR_RUNS_DIR", str(tmp_path / "runs"))
    register(NEW)
    yield NEW.key
    systems.SYSTEMS.pop(NEW.key)


def _parity(key: str, policy: CachePolicy) -> None:
    """Engine == teacher-forced pass (logits), engine == simulator (cache), on a stream long enough that frames
    and narrations leave the cache."""
    from flownar.efficiency.accounting import Layout, bench_chat, bench_config, bench_model, simulate_stream
    from flownar.models.masks import sample_expiry
    from flownar.stream import Narrator

    chat = bench_chat(frame_tokens=3, memory_tokens=4)
    model = bench_model(bench_config(key, "micro", chat, vision_dim=16))
    assert model.config.cache_policy == policy
    from flownar.data.readers import Narration, NarrationStream, VideoInfo
    from flownar.data.samples import make_stream_sample

    times = (1.0, 2.5, 5.0, 6.5, 9.0, 11.5)
    stream = NarrationStream("v", "v", [Narration(t, "You pick up the knife.") for t in times])
    memory = model.config.use_memory
    s = make_stream_sample(stream, VideoInfo("v", 14.0, Path("x")), 2.0, use_memory=memory, seed=None)
    enc = chat.encode(s)
    frames = torch.randn(s.num_frames, 3, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(
            input_ids=enc.input_ids[None],
            frames=frames,
            mem_frame_indices=enc.mem_frame_indices,
            expiry=sample_expiry(enc, model.config),
        ).logits[0]
    at = dict(zip(s.narration_frames, [m.content for m in s.messages if m.role == "assistant"]))
    nar = Narrator(model, chat, record_logits=True)
    sizes = []
    for i in range(s.num_frames):
        nar.push(frames[i], speak=(i in at) if i else None, script_text=at.get(i))
        sizes.append(nar.state_size()["tokens"])
    L = len(enc.input_ids)
    assert nar.fed_ids == enc.input_ids[: L - 1].tolist()
    torch.testing.assert_close(torch.cat(nar.fed_logits), ref[: L - 1], atol=2e-4, rtol=1e-4)
    text = len(chat.tok(" You pick up the knife.", add_special_tokens=False)["input_ids"])
    tr = simulate_stream(model.config, Layout.from_chat(chat, text), sorted(at), s.num_frames, finish=False)
    assert sizes == tr.frame_tokens_after


def test_a_system_defined_outside_the_package(new_system, tmp_path):
    from flownar.data.prepare import prepare_dataset
    from flownar.efficiency.bench import run_bench
    from flownar.eval.runner import run_self_conditioned
    from flownar.eval.tables import self_conditioned_table
    from flownar.train.config import train_config
    from flownar.train.loop import train

    key = new_system
    assert key in systems.learned() and systems.select(key) == [key]
    _parity(key, NEW.policy)
    data = prepare_dataset("ek100", None, "smoke", 0, progress=False)
    run = train(train_config(key, "smoke", out=str(tmp_path / "run"), max_steps=3, progress=False), resume=False)
    res = run_self_conditioned(
        run, data, tmp_path / "pred", tmp_path / "metrics.json", system=key, limit=1, progress=False
    )
    table = self_conditioned_table({key: res["scores"]}, "ek100", scoring="corrected")
    assert table.index.tolist() == [NEW.name] and 0.0 <= table.loc[NEW.name, "F1"] <= 100.0
    bench = run_bench([key], [40], config="micro", progress=False)
    (r,) = bench["runs"]
    assert r["system"] == key and r["fps"] > 0


# ---------------------------------------------------------------------------------------------- a new memory
class LastFrameMemory(MemoryKind):
    """A toy memory: the memory block shows the last frame seen before it, its tokens repeated to fill the block
    (non-parametric)."""

    name = "last-frame"

    def readouts(self, model, frames, mem_frame_indices, features=None):
        Q = model.config.num_m_tokens
        cycle = torch.arange(Q) % frames.shape[1]
        return frames[mem_frame_indices][:, cycle]  # (B, Q, D)

    def stream(self, model, device, dtype):
        return LastFrameStream(model.config.num_m_tokens)

    def write(self, model, streams, frames):
        for s, f in zip(streams, frames):
            s.frame = f


class LastFrameStream(StreamMemory):
    def __init__(self, q: int):
        self.q, self.frame = q, None

    def read(self, dtype):
        return self.frame[torch.arange(self.q) % self.frame.shape[0]].to(dtype)

    @property
    def state_bytes(self) -> int:
        return 0 if self.frame is None else self.frame.numel() * 4


def test_a_memory_defined_outside_the_package(tmp_path, monkeypatch):
    from flownar.models.memory import MEMORIES, register_memory
    from flownar.train.config import train_config
    from flownar.train.loop import train

    monkeypatch.setenv("FLOWNAR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWNAR_RUNS_DIR", str(tmp_path / "runs"))
    register_memory(LastFrameMemory())
    system = register(
        System(
            "dcm-last-frame",
            "DCM + the last frame as memory (a test's)",
            "#bcbd22",
            dict(dcm=True, memory="last-frame", use_memory=True),
        )
    )
    try:
        _parity(system.key, system.policy)
        from flownar.data.prepare import prepare_dataset

        prepare_dataset("ek100", None, "smoke", 0, progress=False)
        run = train(
            train_config(system.key, "smoke", out=str(tmp_path / "run"), max_steps=2, progress=False), resume=False
        )
        assert (run / "model.safetensors").is_file()
    finally:
        systems.SYSTEMS.pop(system.key)
        MEMORIES.pop("last-frame")
