"""The two places where transformers' API moved under us, read off the installed version's own signatures.

transformers 5.24 renamed the key/value cache of model and layer forwards, and of their outputs, from
``past_key_values`` to ``cache`` (the old names still work with a warning until 5.40). Code here that hands a cache
to transformers or reads one back uses :data:`CACHE_ARG` / :data:`CACHE_FIELD`; a layer that has to *find* the
cache among the arguments it was given uses :func:`find_cache` (by type, not by name). Nothing else in flownar
depends on how transformers spells its cache: the streaming engine and the oracle's look-ahead run on
:class:`flownar.engine.kv.StaticKVCache`, which is ours.
"""

from __future__ import annotations

import inspect
from dataclasses import fields

from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel

CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


def find_cache(kwargs: dict) -> Cache | None:
    """The key/value cache among a forward's keyword arguments, whatever its name (None if there is none)."""
    return next((v for v in kwargs.values() if isinstance(v, Cache)), None)
