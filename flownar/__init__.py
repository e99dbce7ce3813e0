"""flownar: streaming narration for long videos (FlowNar, ICML 2026) and the systems it is measured against."""

__version__ = "0.1.0"

import os as _os
import shutil as _shutil

# DeepSpeed (imported by peft/accelerate when present) logs a warning while probing for an accelerator on every
# import; on a machine without NVIDIA tools, tell it the answer.
if "DS_ACCELERATOR" not in _os.environ and _shutil.which("nvidia-smi") is None:
    _os.environ["DS_ACCELERATOR"] = "cpu"

# Model loading and saving progress bars from transformers would clutter notebooks (and their nbval outputs).
_os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except Exception:  # transformers missing or changed: only cosmetic
    pass
