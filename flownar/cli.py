"""The ``flownar`` command line. Subcommands grow with the package:

flownar data synth --layout ek100 --profile smoke --out DIR     write the embedded synthetic dataset
flownar data check DIR --dataset ek100                          validate a dataset root and print statistics
flownar train --system flownar --profile smoke [--data DIR] [--out DIR]   train one system
flownar eval stream --checkpoint RUN --data DIR --out DIR       self-conditioned narration + metrics
flownar eval oracle --checkpoint RUN --data DIR --out DIR       teacher-forced metrics
flownar eval qa --checkpoint RUN --data DIR --out DIR           the world's questions asked during the stream
flownar bench --systems flownar,videollm-online --frames 10000 --config tiny --json OUT.json
                                                                speed and memory of the streaming engine
flownar extract-features VIDEO_OR_DIR --vision SIGLIP_DIR --out DATA_ROOT   videos -> FlowNar-Data features
flownar narrate VIDEO --checkpoint RUN --vision SIGLIP_DIR [--out DIR] [--realtime] [--ask T:Q]   live narration
flownar chat VIDEO_OR_FEATURES --checkpoint RUN [--vision SIGLIP_DIR]   narrate live, answer what is typed
flownar summary DIR                                              SUMMARY.md: an output folder's results page
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import paths
from . import systems as registry
from .data.layouts import DATASETS
from .errors import FlowNarError


def _cmd_data_synth(args) -> int:
    from .data.synth import write_synthetic_dataset

    root = write_synthetic_dataset(
        args.out,
        layout=args.layout,
        profile=args.profile,
        seed=args.seed,
        feature_format=args.format,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote synthetic {args.layout} dataset ({args.profile}, seed {args.seed}) to {root}")
    return 0


def _cmd_data_check(args) -> int:
    from .data.readers import FlowNarData
    from .data.stats import statistics_table

    data = FlowNarData(args.root, dataset=args.dataset, strict=args.strict)
    print(data)
    report = data.check_features(progress=not args.quiet)
    print(
        f"features OK: {report['videos']} videos, {report['frames']} frames, "
        f"{report['tokens_per_frame']} tokens/frame, dim {report['feature_dim']}"
    )
    print(statistics_table(data).round(2).T.to_string())
    if data.skipped:
        for reason, ids in data.skipped.items():
            print(f"skipped {len(ids)} {reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flownar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_data(sub)
    _add_train(sub)
    _add_convert_checkpoint(sub)
    _add_eval(sub)
    _add_bench(sub)
    _add_extract_features(sub)
    _add_narrate(sub)
    _add_chat(sub)
    _add_summary(sub)
    _add_provenance(sub)
    _add_claims(sub)
    return p


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="datasets: write the synthetic world, validate a data root")
    dsub = data.add_subparsers(dest="data_command", required=True)

    s = dsub.add_parser("synth", help="write the embedded synthetic dataset in a FlowNar-Data layout")
    s.add_argument("--layout", default="ek100", choices=DATASETS)
    s.add_argument("--profile", default="smoke", help="size profile: smoke or default")
    s.add_argument("--out", required=True, type=Path, help="dataset root to write")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", default="pt", choices=["pt", "safetensors"], help="feature file format")
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_data_synth)

    c = dsub.add_parser("check", help="validate a dataset root (annotations and every feature file)")
    c.add_argument("root", type=Path)
    c.add_argument("--dataset", default="ek100", choices=DATASETS)
    c.add_argument("--strict", action="store_true", help="fail on skipped videos instead of warning")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_data_check)


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train one system (embedded default or, with --llm, LoRA at paper scale)")
    from .train.launch import add_train_arguments

    add_train_arguments(t)
    t.set_defaults(func=_cmd_train)


def _add_convert_checkpoint(sub) -> None:
    cv = sub.add_parser(
        "convert-checkpoint", help="a checkpoint of the original FlowNar code (LoRA adapter folder) -> a run"
    )
    cv.add_argument("src", type=Path, help="the original's checkpoint folder (adapter_config.json, adapter_model.*)")
    cv.add_argument("--system", required=True, choices=("flownar", "flownar-c", "videollm-online"))
    cv.add_argument("--llm", required=True, type=Path, help="the local base LLM folder (Llama-3.2-1B-Instruct)")
    cv.add_argument("--out", required=True, type=Path, help="the run folder to write")
    cv.add_argument("--frame-tokens", type=int, default=10, help="tokens per frame (FlowNar-Data: 10)")
    cv.add_argument("--last-k", type=int, default=None, help="FlowNar-C's narration window (default 10)")
    cv.set_defaults(func=_cmd_convert)


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a trained system (self-conditioned stream or oracle)")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    for name, func in (("stream", _cmd_eval_stream), ("oracle", _cmd_eval_oracle), ("qa", _cmd_eval_qa)):
        e = esub.add_parser(
            name,
            help={
                "stream": "narrate every val clip on the model's own outputs, then score",
                "oracle": "teacher-forced LM-PPL, TimeDiff, Fluency, LM-Correctness",
                "qa": "ask the embedded world's questions during the stream; answers right by type and memory gap",
            }[name],
        )
        e.add_argument("--checkpoint", required=True, type=Path, help="a run directory written by flownar train")
        e.add_argument("--data", required=True, type=Path, help="dataset root (FlowNar-Data layout)")
        e.add_argument("--dataset", default="ek100", choices=DATASETS)
        e.add_argument("--split", default="val")
        e.add_argument("--out", required=True, type=Path, help="output directory")
        e.add_argument("--system", default=None, help="refuse a checkpoint of another system")
        e.add_argument("--limit", type=int, default=None, help="only the first N clips/samples")
        e.add_argument("--seed", type=int, default=0)
        if name == "qa":
            e.add_argument("--quiet", action="store_true")
            e.add_argument(
                "--max-new-tokens", type=int, default=None, help="cap on one answer (default: the profile's)"
            )
            e.set_defaults(func=func)
            continue
        e.add_argument(
            "--shard",
            default=None,
            metavar="i/N",
            help="evaluate part i of N (0-based); the last part to finish merges (under torchrun the ranks are the "
            "shards and rank 0 merges; see flownar.eval.shards)",
        )
        e.add_argument("--quiet", action="store_true")
        if name == "stream":
            e.add_argument("--threshold-high", type=float, default=0.8)
            e.add_argument("--threshold-low", type=float, default=0.5)
            e.add_argument(
                "--max-new-tokens",
                type=int,
                default=None,
                help="cap on one narration (default: the run's profile's, flownar.profiles.Profile.narration_cap: "
                "100 at paper, as the original; 32 on the embedded profiles)",
            )
            e.add_argument("--no-captions", action="store_true", help="skip METEOR/ROUGE-L/CIDEr")
            e.add_argument(
                "--predictions", type=Path, default=None, help="per-clip prediction folder (default: OUT/predictions)"
            )
        e.set_defaults(func=func)


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="speed and memory of the streaming engine (random weights, replayed schedule)")
    b.add_argument(
        "--systems",
        default="videollm-online,videollm-mod,flownar-c,flownar",
        help=f"comma-separated, or 'all': {', '.join(registry.learned())}",
    )
    b.add_argument(
        "--frames",
        default="10000",
        help="stream length (comma-separated: the largest is run; memory is recorded at 1, 10, 100, ...)",
    )
    b.add_argument(
        "--long-frames",
        type=int,
        default=None,
        help="a longer stream for the systems with a bounded visual cache (DCM or a window), e.g. 100000",
    )
    b.add_argument("--config", default="tiny", help="LLM size: micro, mini, tiny, small, llama-3.2-1b, llama-3.1-8b")
    b.add_argument("--device", default="cpu", help="cpu or cuda")
    b.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: float32 on CPU, bfloat16 on CUDA",
    )
    b.add_argument(
        "--engine",
        default="static",
        choices=["static", "hf"],
        help="static: preallocated cache (default); hf: transformers' DynamicCache (the baseline)",
    )
    b.add_argument(
        "--segment-stats",
        type=float,
        nargs=2,
        metavar=("MEAN_S", "STD_S"),
        default=None,
        help="segment duration statistics of the schedule (default: EK100's 3.83 +- 7.95 s)",
    )
    b.add_argument("--data", type=Path, default=None, help="take the segment statistics from this dataset root")
    b.add_argument("--dataset", default="ek100", choices=DATASETS)
    b.add_argument("--text-tokens", type=int, default=12, help="tokens per replayed narration")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    b.add_argument(
        "--streams",
        type=int,
        default=1,
        help="run this many streams at once, one batched decoder step per round (throughput; default 1)",
    )
    b.add_argument(
        "--compile", action="store_true", help="the compiled decoder step (torch.compile; not for VideoLLM-MoD)"
    )
    b.add_argument(
        "--capture",
        action="store_true",
        help="the static-shape step replayed as CUDA graphs on a GPU (flownar.engine.steps.CapturedStep; not for MoD)",
    )
    b.add_argument(
        "--max-seconds", type=float, default=None, help="stop each system's stream after this much wall time"
    )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", required=True, type=Path, help="where to write the raw results")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_cmd_bench)


def _add_extract_features(sub) -> None:
    x = sub.add_parser("extract-features", help="encode video files into a FlowNar-Data root (2 fps, SigLIP, 1+3x3)")
    x.add_argument("videos", type=Path, help="a video file or a folder of videos")
    x.add_argument(
        "--vision", required=True, type=Path, help="local SigLIP vision tower (google/siglip-large-patch16-384)"
    )
    x.add_argument("--out", required=True, type=Path, help="dataset root to write (features + features_metadata.json)")
    x.add_argument("--layout", default="ek100", choices=DATASETS, help="feature folder naming")
    x.add_argument("--batch-size", type=int, default=16)
    x.add_argument("--device", default="cpu")
    x.add_argument("--overwrite", action="store_true", help="re-encode videos already in the metadata")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=_cmd_extract)


def _add_chat(sub) -> None:
    c = sub.add_parser("chat", help="narrate a video or feature file live and answer the questions typed meanwhile")
    c.add_argument("source", type=Path, help="a video file (with --vision) or a feature file (.pt / .safetensors)")
    c.add_argument("--checkpoint", required=True, type=Path, help="a run directory written by flownar train")
    c.add_argument("--vision", type=Path, default=None, help="the SigLIP tower the model was trained on (videos)")
    c.add_argument("--speed", type=float, default=1.0, help="times the video clock (0: as fast as possible)")
    c.add_argument("--max-new-tokens", type=int, default=32)
    c.set_defaults(func=_cmd_chat)


def _cmd_chat(args) -> int:
    from .live_chat import chat

    print("type a question and Enter at any moment (Ctrl-D: no more questions)", file=sys.stderr)
    r = chat(args.source, args.checkpoint, args.vision, speed=args.speed, max_new_tokens=args.max_new_tokens)
    print(f"{r['frames']} frames, {r['narrations']} narrations, {r['answers']} answers", file=sys.stderr)
    return 0


def _add_narrate(sub) -> None:
    nr = sub.add_parser("narrate", help="narrate a video file live with a trained checkpoint")
    nr.add_argument("video", type=Path)
    nr.add_argument("--checkpoint", required=True, type=Path, help="a run directory written by flownar train")
    nr.add_argument("--vision", required=True, type=Path, help="the SigLIP vision tower the model was trained on")
    nr.add_argument(
        "--out", type=Path, default=None, help="folder for <video>.json/.srt/.vtt (default: beside the video)"
    )
    nr.add_argument("--realtime", action="store_true", help="pace input at the video clock and report the lag")
    nr.add_argument(
        "--ask",
        action="append",
        default=[],
        metavar="SECONDS:QUESTION",
        help="ask QUESTION at that video time (repeatable); the answer comes right after that frame",
    )
    nr.add_argument("--threshold-high", type=float, default=0.8)
    nr.add_argument("--threshold-low", type=float, default=0.5)
    nr.add_argument("--max-new-tokens", type=int, default=32)
    nr.add_argument("--device", default="cpu")
    nr.add_argument("--quiet", action="store_true", help="no progress bar")
    nr.set_defaults(func=_cmd_narrate)


def _add_provenance(sub) -> None:
    pv = sub.add_parser("provenance", help="write provenance.json (commit, data fingerprint, versions, device)")
    pv.add_argument("--dataset", default="ek100", choices=DATASETS)
    pv.add_argument("--profile", default="default")
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--data", type=Path, default=None, help="dataset root (default: the embedded one of the profile)")
    pv.add_argument("--out", required=True, type=Path, help="folder to write provenance.json into")
    pv.set_defaults(func=_cmd_provenance)


def _add_summary(sub) -> None:
    sm = sub.add_parser("summary", help="write SUMMARY.md: the results page of an output folder, from its files")
    sm.add_argument("dirs", nargs="+", type=Path, help="output folders (paper_figures/<dataset>/<profile>)")
    sm.set_defaults(func=_cmd_summary)


def _cmd_summary(args) -> int:
    from .summary import write_summary

    for d in args.dirs:
        print("wrote", write_summary(d))
    return 0


def _add_claims(sub) -> None:
    cl = sub.add_parser("claims", help="the claims table (paper vs ours, mean +- std over seeds, verdict)")
    cl.add_argument("--dataset", default="ek100", choices=DATASETS)
    cl.add_argument("--dirs", nargs="+", required=True, help="one output folder per seed")
    cl.add_argument("--out", required=True, help="folder for table_claims and table_seeds (.csv, .md, .tex)")
    cl.set_defaults(func=_cmd_claims)


def _cmd_claims(args) -> int:
    from .claims import main as claims_main

    return claims_main(["--dataset", args.dataset, "--dirs", *args.dirs, "--out", args.out])


def _cmd_provenance(args) -> int:
    from .provenance import write_provenance

    print(f"wrote {write_provenance(args.out, args.dataset, args.profile, args.seed, args.data)}")
    return 0


def _cmd_extract(args) -> int:
    from .video import extract_features

    r = extract_features(
        args.videos,
        args.vision,
        args.out,
        layout=args.layout,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"encoded {len(r['encoded'])} video(s), skipped {len(r['skipped'])} already encoded; "
        f"features ({r['tower']}, dim {r['hidden_size']}) in {r['feature_dir']}"
    )
    return 0


def _cmd_narrate(args) -> int:
    from .narrate import narrate_video, timestamp

    def show(item):
        said = f"Q: {item['question']} A: {item['text']}" if "question" in item else item["text"]
        print(f"[{timestamp(item['time'], '.')[3:]}] {said}", flush=True)

    asks = []
    for item in args.ask:
        when, sep, question = item.partition(":")
        try:
            asks.append((float(when), question))
        except ValueError:
            raise ValueError(f"--ask {item!r}: expected SECONDS:QUESTION, e.g. '12.5:What is in the drawer?'") from None
        if not sep or not question.strip():
            raise ValueError(f"--ask {item!r}: an empty question; expected SECONDS:QUESTION")
    out = args.out if args.out is not None else args.video.parent
    res, files = narrate_video(
        args.video,
        args.checkpoint,
        args.vision,
        out,
        realtime=args.realtime,
        progress=not args.quiet,
        on_event=show,
        device=args.device,
        threshold_high=args.threshold_high,
        threshold_low=args.threshold_low,
        max_new_tokens=args.max_new_tokens,
        asks=asks,
    )
    rate = res.frames / res.wall_s if res.wall_s else float("nan")
    msg = f"{len(res.narrations)} narrations over {res.frames} frames in {res.wall_s:.1f} s ({rate:.1f} frames/s)"
    if res.realtime:
        msg += f"; behind the video clock by {res.final_lag_s:.2f} s at the end (at most {res.max_lag_s:.2f} s)"
    print(msg)
    for path in files.values():
        print(f"wrote {path}")
    return 0


def _cmd_bench(args) -> int:
    import json

    import torch

    from .efficiency import EK100_SEGMENT_STATS, run_bench, segment_stats_from_data

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to this torch build")
    systems = registry.select(args.systems)
    try:
        frames = [int(f) for f in str(args.frames).split(",")]
    except ValueError as e:
        raise ValueError(f"--frames: expected comma-separated integers, got {args.frames!r}") from e
    stats = tuple(args.segment_stats) if args.segment_stats else EK100_SEGMENT_STATS
    if args.data is not None:
        from .data.readers import FlowNarData

        stats = segment_stats_from_data(FlowNarData(args.data, args.dataset))
    lengths = frames
    if args.long_frames:
        lengths = {s: (args.long_frames if registry.get(s).policy.bounded_vision else max(frames)) for s in systems}
    res = run_bench(
        systems,
        lengths,
        config=args.config,
        device=args.device,
        dtype=args.dtype,
        engine=args.engine,
        segment_stats=stats,
        text_tokens=args.text_tokens,
        seed=args.seed,
        progress=not args.quiet,
        streams=args.streams,
        compile=args.compile,
        capture=args.capture,
        max_seconds=args.max_seconds,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res))
    for r in res["runs"]:
        print(
            f"{r['system']:>16}: {r['frames']} frames"
            + (f" x {r['streams']} streams" if r.get("streams", 1) > 1 else "")
            + f", {r['fps']:.1f} frames/s, "
            f"cache {r['points'][-1]['cache_tokens']} tokens ({r['points'][-1]['kv_bytes'] / 2**20:.1f} MiB)"
        )
    print(f"wrote {args.json}")
    return 0


def _cmd_convert(args) -> int:
    from .convert import convert_checkpoint

    out = convert_checkpoint(
        args.src, args.system, args.out, args.llm, frame_num_tokens=args.frame_tokens, last_k_narration=args.last_k
    )
    print(f"wrote {out} (a {args.system} run on {args.llm}; CLAM read at the frame's CLS token, as the original)")
    return 0


def _cmd_eval_stream(args) -> int:
    import json

    from .data.readers import FlowNarData
    from .eval.runner import run_self_conditioned
    from .eval.shards import pending_line

    data = FlowNarData(args.data, args.dataset)
    rec = run_self_conditioned(
        args.checkpoint,
        data,
        args.predictions or args.out / "predictions",
        args.out / "metrics.json",
        system=args.system,
        split=args.split,
        limit=args.limit,
        progress=not args.quiet,
        with_captions=not args.no_captions,
        max_new_tokens=args.max_new_tokens,
        threshold_high=args.threshold_high,
        threshold_low=args.threshold_low,
        shard=args.shard,
    )
    if "scores" not in rec:  # a shard that does not merge
        r = rec["run"]
        print(
            f"shard {rec['shard']}: narrated {r['done']} clips, reused {r['reused']}"
            + (f"; {pending_line(rec)}" if rec.get("pending") else ""),
            file=sys.stderr,
        )
        return 0
    brief = {k: {m: v for m, v in sc.items() if m not in ("per_clip", "pairs")} for k, sc in rec["scores"].items()}
    print(json.dumps(brief, indent=1, default=float))
    r = rec["run"]
    print(
        f"narrated {r['done']} clips ({r['redone']} of them replacing files of another model or clip, or unreadable), "
        f"reused {r['reused']} narrated by this model; scored {rec['scored_clips']} clips"
        + (f" (the {len(r['clips'])} of --limit {args.limit})" if args.limit is not None else ""),
        file=sys.stderr,
    )
    return 0


def _cmd_eval_qa(args) -> int:
    from .data.readers import FlowNarData
    from .eval.qa import qa_long, qa_table, run_qa

    data = FlowNarData(args.data, args.dataset)
    rec = run_qa(
        args.checkpoint,
        data,
        args.out / "qa.json",
        system=args.system,
        split=args.split,
        limit=args.limit,
        progress=not args.quiet,
        max_new_tokens=args.max_new_tokens,
    )
    print(qa_table(qa_long({rec["system"]: rec})).T.to_string())
    return 0


def _cmd_eval_oracle(args) -> int:
    import json

    from .data.readers import FlowNarData
    from .eval.runner import run_teacher_forced

    data = FlowNarData(args.data, args.dataset)
    rec = run_teacher_forced(
        args.checkpoint,
        data,
        args.out / "oracle.json",
        system=args.system,
        split=args.split,
        seed=args.seed,
        limit=args.limit,
        progress=not args.quiet,
        shard=args.shard,
    )
    if rec.get("reused"):
        print(f"{args.out / 'oracle.json'}: this model's record on these inputs, reused", file=sys.stderr)
    if "metrics" not in rec:  # a shard that does not merge
        print(f"shard {rec['shard']}: {len(rec['samples'])} samples evaluated", file=sys.stderr)
        if rec.get("pending"):
            print(f"waiting for {len(rec['pending'])} other part(s): {', '.join(rec['pending'])}", file=sys.stderr)
        if rec.get("other_counts"):
            print(
                f"parts made with another shard count are there too and never merge with these: "
                f"{', '.join(rec['other_counts'])}; give every shard the same N (--shard i/N)",
                file=sys.stderr,
            )
        return 0
    print(json.dumps(rec["metrics"], indent=1))
    return 0


def _cmd_train(args) -> int:
    from .train.launch import run_from_args

    run_from_args(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "out", None):  # every --out is a folder: made and checked before any work
            paths.writable_dir(args.out)
        return args.func(args)
    except (FlowNarError, ValueError) as e:
        print(f"flownar: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only or missing folder, a file where a folder should be: one line
        print(f"flownar: error: {os_error_line(e)}", file=sys.stderr)
        return 2


def os_error_line(e: OSError) -> str:
    """``<path>: <cause>`` (``<path> -> <path2>`` for a rename) when the error names a file, else its text."""
    if e.filename is None:
        return str(e)
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 else "")
    return f"{where}: {e.strerror or type(e).__name__}"


if __name__ == "__main__":
    sys.exit(main())
