"""Progress bars for long work (training steps, clips narrated, streams scored, benchmark frames).

Where the bar goes depends on ``FLOWNAR_PROGRESS``:

* ``auto`` (default): ``tqdm.auto`` when the caller asks for a bar (a terminal bar on the command line, a widget
  in JupyterLab), nothing otherwise;
* ``terminal``: always a plain text bar on the process's own standard error (``sys.__stderr__``), whatever the
  caller asked. ``make reproduce-*`` sets it for the notebooks it executes with papermill: a kernel's own
  standard error is the terminal that runs ``make``, so the user sees training steps and clips go by, while the
  executed notebooks (and the outputs nbval compares) stay free of progress output;
* ``off``: never.
"""

from __future__ import annotations

import os
import sys


def progress_bar(iterable=None, *, enabled: bool = True, never: bool = False, **kwargs):
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``), placed as ``FLOWNAR_PROGRESS`` says.

    ``enabled``: the caller's wish (``progress=`` of the public functions); ``never``: no bar in any mode (e.g. on
    a distributed rank other than 0)."""
    mode = "off" if never else os.environ.get("FLOWNAR_PROGRESS", "auto").lower()
    if mode == "terminal":
        from tqdm.std import tqdm

        kwargs.setdefault("mininterval", 5.0)
        off = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")  # read now: tqdm reads it at import
        return tqdm(
            iterable,
            file=sys.__stderr__,
            leave=True,
            dynamic_ncols=False,
            ncols=100,
            disable=off,
            **{k: v for k, v in kwargs.items() if k not in ("leave", "disable")},
        )
    from tqdm.auto import tqdm

    kwargs["disable"] = mode == "off" or not enabled or kwargs.get("disable", False)
    return tqdm(iterable, **kwargs)
