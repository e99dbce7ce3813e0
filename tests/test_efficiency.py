"""Efficiency tools: the token simulator matches the engine, the MAC formulas match the flop counter, the KV-size
accounting matches the bytes actually cached, and the static cache compacts correctly."""

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from flownar.efficiency import (
    Layout,
    bench_chat,
    bench_config,
    bench_model,
    cache_bytes,
    kv_bytes_per_token,
    narration_schedule,
    run_bench,
    simulate_stream,
    stream_macs,
)
from flownar.engine.kv import StaticKVCache
from flownar.stream import Narrator
from flownar.systems import learned

TEXT = 5


@pytest.fixture(scope="module")
def chat():
    return bench_chat(frame_tokens=10, memory_tokens=4)


def _model(chat, system):
    cfg = bench_config(system, "micro", chat, vision_dim=16)
    cfg.num_m_tokens = chat.num_m_tokens
    return bench_model(cfg)


def _replay(model, chat, schedule, n, **kw):
    nar = Narrator(model, chat, **kw)
    text = [chat.tok.convert_tokens_to_ids("▁the")] * TEXT
    frames = torch.randn(n, 10, model.config.vision_hidden_size)
    sizes = []
    for i in range(n):
        nar.push(frames[i], speak=(i in schedule) if i else None, script_text=text)
        sizes.append(nar.state_size())
    return nar, sizes


@pytest.mark.parametrize("system", sorted(learned()))
def test_simulator_matches_engine_cache(chat, system):
    model = _model(chat, system)
    sched = narration_schedule(60, 3.83, 7.95, seed=3)
    assert sched[0] == 0 and len(sched) > 4
    nar, sizes = _replay(model, chat, set(sched), 60)
    tr = simulate_stream(model.config, Layout.from_chat(chat, TEXT), sched, 60, finish=False)
    assert [s["tokens"] for s in sizes] == tr.frame_tokens_after
    assert nar.counters.narrations == tr.narrations
    # KV accounting: the bytes the engine holds (per layer, MoD's routed layers fewer) = the formula
    assert sizes[-1]["kv_bytes"] == cache_bytes(
        model.config, tr.frame_tokens_after[-1], tr.frame_tokens_after_routed[-1], bytes_per_element=4
    )


def test_kv_bytes_per_token_of_llama_3_2_1b(chat):
    cfg = bench_config("videollm-online", "llama-3.2-1b", chat)
    assert kv_bytes_per_token(cfg, 2) == 2 * 16 * 8 * 64 * 2 == 32768  # 32 KiB per token in bf16
    cfg8 = bench_config("videollm-online", "llama-3.1-8b", chat)
    assert kv_bytes_per_token(cfg8, 2) == 2 * 32 * 8 * 128 * 2


@pytest.mark.parametrize("system", ["videollm-online", "videollm-mod", "flownar", "streaming-vlm"])
def test_mac_formulas_match_the_flop_counter(chat, system):
    """The analytic MACs of a traced stream equal what torch's flop counter sees when the engine runs it (sdpa
    forced to its math backend, whose matmuls the counter sees). Not flash-vstream: its memory's k-means takes a
    data-dependent number of iterations, and the formula does not count it (said in stream_macs)."""
    model = _model(chat, system)
    n = 24
    sched = narration_schedule(n, 2.0, 1.0, seed=1)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        _replay(model, chat, set(sched), n)
    tr = simulate_stream(model.config, Layout.from_chat(chat, TEXT), sched, n, finish=False)
    macs = stream_macs(model.config, tr)
    # Building the RoPE cos/sin table is not model compute (the formula leaves it out); transformers < 5.2x builds
    # it with a matmul (inv_freq @ positions) that the counter sees, later versions with a product it does not.
    rope = sum(sum(c.values()) for name, c in fc.get_flop_counts().items() if "rotary" in name.lower())
    assert fc.get_total_flops() - rope == 2 * macs["total"], (fc.get_total_flops() / 2, rope / 2, macs)


def test_real_config_is_llama_3_2_1b_sized(chat):
    model = bench_model(bench_config("videollm-online", "llama-3.2-1b", chat), device="meta")
    llm = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("connector"))
    assert abs(llm - 1.236e9) / 1.236e9 < 0.01  # Llama-3.2-1B: 1.24 B parameters (tied embeddings)


def test_static_cache_buffers_start_as_zeros():
    """The captured step attends over the whole capacity (unused slots masked), so a fresh or grown buffer must
    hold finite numbers: zeros, not whatever memory it was given (a freed NaN-filled block of the same size is
    offered first, which ``torch.empty`` would hand back as it is)."""
    for _ in range(3):
        junk = torch.full((1, 2, 64, 8), float("nan"))
        del junk
        c = StaticKVCache(1, 2, 8, capacity=64)
        assert (c.keys[0] == 0).all() and (c.values[0] == 0).all()
        junk = torch.full((1, 2, 128, 8), float("nan"))
        del junk
        c.reserve(0, 65)  # grows by doubling: a new buffer, the old slots copied in
        assert c.capacity == 128 and (c.keys[0] == 0).all() and (c.values[0] == 0).all()


def test_static_cache_compaction_in_place():
    c = StaticKVCache(2, 1, 2, capacity=4)
    vals = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 1, 10, 2)
    for layer in range(2):
        c.append(layer, vals[:, :, :6], vals[:, :, :6] + 100)
    assert c.reallocations == 2 and c.capacity == 8  # each layer grew once, by doubling
    buf_before = c.keys[0].data_ptr()
    keep = np.array([1, 1, 0, 0, 1, 1], bool)
    assert c.compact(keep) == 2
    assert c.keys[0].data_ptr() == buf_before  # in place: no reallocation
    assert c.lengths == [4, 4]
    assert c.keys[1][0, 0, :4, 0].tolist() == [0, 1, 4, 5]
    assert c.values[0][0, 0, :4, 1].tolist() == [100, 101, 104, 105]
    K, V = c.append(0, vals[:, :, 6:7], vals[:, :, 6:7])
    assert K[0, 0, :, 0].tolist() == [0, 1, 4, 5, 6]
    assert c.used_bytes() == (5 + 4) * 2 * 1 * 2 * 4
    with pytest.raises(ValueError, match="compact"):
        c.compact(np.ones(5, bool))  # layers of different lengths
    c.append(1, vals[:, :, 6:7], vals[:, :, 6:7])
    assert c.compact(np.ones(5, bool)) == 0
    with pytest.raises(ValueError, match="compact"):
        c.compact(np.ones(3, bool))  # a mask of the wrong length


@pytest.mark.parametrize("system", ["videollm-online", "flownar-c"])
def test_static_and_hf_engines_agree(chat, system):
    model = _model(chat, system)
    sched = set(narration_schedule(30, 2.0, 1.0, seed=2))
    torch.manual_seed(5)
    a, _ = _replay(model, chat, sched, 30, record_logits=True)
    torch.manual_seed(5)
    b, _ = _replay(model, chat, sched, 30, record_logits=True, engine="hf")
    assert a.fed_ids == b.fed_ids
    torch.testing.assert_close(torch.cat(a.fed_logits), torch.cat(b.fed_logits), atol=2e-4, rtol=1e-4)


def test_run_bench_writes_points(chat):
    res = run_bench(["flownar", "videollm-online"], [120], config="micro", progress=False)
    runs = {r["system"]: r for r in res["runs"]}
    assert [p["frames"] for p in runs["flownar"]["points"]] == [1, 10, 100, 120]
    # same schedule, so the same narrations; DCM holds fewer tokens
    assert runs["flownar"]["narrations"] == runs["videollm-online"]["narrations"] > 5
    assert runs["flownar"]["points"][-1]["cache_tokens"] < runs["videollm-online"]["points"][-1]["cache_tokens"]
    assert len(runs["flownar"]["frame_ms"]) == 120 and runs["flownar"]["macs"]["total"] > 0


def test_run_bench_with_several_streams_replays_the_same_stream(chat):
    """Three streams at once (batched steps): each replays the schedule, so stream 0's cache along the way and its
    narrations equal the single-stream run's; the throughput counts every stream's frames."""
    one = run_bench(["flownar-c", "videollm-mod"], [120], config="micro", progress=False)
    three = run_bench(["flownar-c", "videollm-mod"], [120], config="micro", progress=False, streams=3)
    for a, b in zip(one["runs"], three["runs"]):
        assert b["streams"] == 3 and b["narrations"] == a["narrations"] > 5
        assert [(p["frames"], p["cache_tokens"]) for p in b["points"]] == [
            (p["frames"], p["cache_tokens"]) for p in a["points"]
        ]
        assert b["fps"] == pytest.approx(3 * b["fps_per_stream"]) and b["frame_ms"] == []


def test_cli_bench_writes_json(tmp_path):
    import json

    from flownar.cli import main

    out = tmp_path / "b.json"
    assert (
        main(
            [
                "bench",
                "--systems",
                "flownar-c,videollm-online",
                "--frames",
                "30",
                "--long-frames",
                "50",
                "--config",
                "micro",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert {r["system"]: r["frames"] for r in res["runs"]} == {"flownar-c": 50, "videollm-online": 30}
    assert res["config"] == "micro" and res["engine"] == "static" and "CPU" in res["device"]


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--systems", "flownar,nonsense"], "unknown system 'nonsense'"),
        (["--frames", "ten"], "--frames"),
        (["--config", "gpt-5"], "unknown bench config"),
        (["--device", "cuda"], "no CUDA device"),
        (["--frames", "0"], "must be a positive whole number, got 0"),  # was an IndexError
        (["--frames", "-5"], "must be a positive whole number, got -5"),
        (["--streams", "0"], "streams must be a positive whole number"),
        (["--long-frames", "-1"], "must be a positive whole number, got -1"),
        (["--max-seconds", "0"], "max_seconds must be > 0"),
    ],
)
def test_cli_bench_bad_arguments(tmp_path, capsys, argv, msg):
    from flownar.cli import main

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert (
        main(["bench", "--frames", "5", "--config", "micro", "--json", str(tmp_path / "x.json"), "--quiet", *argv]) == 2
    )
    assert msg in capsys.readouterr().err


def test_capture_on_the_cpu_says_it_ran_without(tmp_path, capsys):
    """issue 28: --capture on the CPU recorded ``capture: true`` with 0 graphs."""
    import json

    from flownar.cli import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = tmp_path / "c.json"
    argv = ["bench", "--systems", "flownar", "--frames", "6", "--config", "micro", "--capture", "--json", str(out)]
    assert main([*argv, "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["capture"] is False and "without capture" in res["capture_note"]
    assert all(r["capture"] is False and r["graphs_captured"] is None for r in res["runs"])
    assert "--capture needs a CUDA device" in capsys.readouterr().out


def test_paper_fit_picks_a_definition_that_predicts_the_other_columns():
    from flownar.efficiency import best_definition, paper_cache_fit, paper_self_conditioned_efficiency

    fit = paper_cache_fit(paper_self_conditioned_efficiency(), {})
    assert set(fit.dataset) == {"EK100", "Ego4D", "EgoExo4D"}
    best = best_definition(fit)
    rows = fit[fit.definition == best]
    # by construction VideoLLM-online is matched; the others are predictions
    assert (
        abs(rows["pred VideoLLM-online"] - rows["paper VideoLLM-online"]) / rows["paper VideoLLM-online"] < 0.01
    ).all()
    assert rows["mean_abs_err_pct"].mean() < fit.groupby("definition")["mean_abs_err_pct"].mean().median()


def test_streaming_vlm_cache_is_bounded_over_a_long_stream(chat):
    """streaming-vlm's cache stops growing: after 10^4 frames it holds the prompt, at most the window's frames and
    the narration window (plus the narration being written), and it is as large late in the stream as early."""
    cfg = bench_config("streaming-vlm", "micro", chat, vision_dim=16)
    lay = Layout.from_chat(chat, TEXT)
    n = 10_000
    tr = simulate_stream(cfg, lay, narration_schedule(n, 3.83, 7.95, seed=0), n, finish=False)
    per_narration = lay.assistant + TEXT + 2  # "Assistant:", the text, EOS and newline
    bound = lay.prompt_head - lay.prompt_frame_run + cfg.vision_window * (lay.frame_tokens + 2)
    bound += (cfg.last_k_narration + 1) * per_narration
    assert max(tr.frame_tokens_peak) <= bound
    late, early = max(tr.frame_tokens_peak[n // 2 :]), max(tr.frame_tokens_peak[n // 10 : n // 2])
    assert abs(late - early) <= 0.02 * early  # flat (the peaks vary only with how long the segments are)
