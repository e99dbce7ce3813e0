"""Sharded evaluation: several processes (GPUs) take disjoint parts of a split, and one merges.

Two ways to launch (both protocols, ``flownar eval stream|oracle``):

* ``torchrun --nproc_per_node N -m flownar.cli eval ...``: each rank reads its place from torchrun's environment
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; on a GPU machine it runs on ``cuda:LOCAL_RANK``), evaluates its part,
  waits for the others (a gloo barrier) and rank 0 merges;
* ``--shard i/N`` on N independent commands (other machines, a job array): each evaluates its part; the one that
  finishes last finds every part on disk and merges (any of them may; the merge is deterministic and written
  atomically).

Shard ``i`` of ``N`` takes items ``i, i + N, i + 2N, ...`` of the split's order. Self-conditioned parts are the usual
per-clip prediction files (resumable: a rerun narrates only what is missing); teacher-forced parts are
``<out>.shard<i>of<N>.json`` files of per-sample rows, merged in the split's order, so the merged metrics equal a
single-process run's (tested with two CPU processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    launched: bool = False  # by torchrun (a process group can be formed), not by --shard

    def __post_init__(self):
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= i < N")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"i/N"`` (0-based i)."""
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard takes i/N (e.g. 0/4), got {text!r}") from None
        return cls(i, n)

    @classmethod
    def from_env(cls) -> "Shard | None":
        """torchrun's rank and world size, if this process was launched by it with more than one process."""
        n = int(os.environ.get("WORLD_SIZE", "1"))
        if n <= 1:
            return None
        return cls(int(os.environ["RANK"]), n, launched=True)

    def take(self, items: list) -> list:
        return items[self.index :: self.count]

    @property
    def leader(self) -> bool:
        return self.index == 0

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def device(self):
        """``cuda:LOCAL_RANK`` for a torchrun rank on a GPU machine, else None (the caller's default)."""
        import torch

        if self.launched and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.index)) % torch.cuda.device_count())
        return None

    def wait_for_all(self) -> None:
        """torchrun ranks: a barrier over a gloo process group (formed here if needed). --shard: nothing to wait for."""
        if not self.launched:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()


def resolve(shard: "Shard | str | None") -> "Shard | None":
    """An explicit ``--shard`` wins; else torchrun's environment; None when the run is not sharded."""
    if isinstance(shard, str):
        shard = Shard.parse(shard)
    if shard is None:
        shard = Shard.from_env()
    return None if shard is None or shard.count == 1 else shard


def pending_line(rec: dict) -> str:
    """The self-conditioned shard's "why not merged": clips of other shards not narrated yet, or narrated by
    another model (a shard given another --checkpoint: it never merges), or unreadable."""
    why = rec.get("pending_why", {})
    line = f"{len(rec['pending'])} clips of other shards pending (" + ", ".join(f"{n} {w}" for w, n in why.items())
    line += ")"
    if why.get("another model's"):
        line += "; files of another model never merge with this one's: give every shard the same --checkpoint"
    return line


def narrate_on_gpus(
    run, data, predictions_dir, *, system: str, gpus: int | None = None, quiet: bool = True, **options
) -> bool:
    """Narrate a split's clips with one torchrun rank per visible GPU (``gpus``: how many; default all) into
    ``predictions_dir``, the per-clip files that :func:`~flownar.eval.runner.run_self_conditioned` then reuses
    (notebook 03 at the paper profile). ``options``: ``threshold_high``, ``threshold_low``, ``max_new_tokens``,
    as the runner's. Returns False (and does nothing) with fewer than two GPUs."""
    import subprocess
    import sys
    import tempfile

    import torch

    n = torch.cuda.device_count() if gpus is None else gpus
    if n < 2:
        return False
    with tempfile.TemporaryDirectory() as scratch:  # rank 0's metrics: the notebook scores again, in process
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
        cmd += ["-m", "flownar.cli", "eval", "stream", "--checkpoint", str(run), "--data", str(data.root)]
        cmd += ["--dataset", data.dataset, "--out", scratch, "--predictions", str(predictions_dir)]
        cmd += ["--system", system, "--no-captions"] + (["--quiet"] if quiet else [])
        for name in ("threshold_high", "threshold_low", "max_new_tokens"):
            if options.get(name) is not None:
                cmd += ["--" + name.replace("_", "-"), str(options[name])]
        subprocess.run(cmd, check=True)
    return True
