"""The streaming engine's decoder step: key/value stores (:mod:`~flownar.engine.kv`), one Llama layer with the
attention passed in (:mod:`~flownar.engine.layer`), the step's weights (:mod:`~flownar.engine.weights`: fused
projections, a RoPE table) and the steps themselves (:mod:`~flownar.engine.steps`: eager, batched over streams,
compiled, captured), and the tokens of a step (:mod:`~flownar.engine.chunks`: the layout's pieces as ids and cache
tags). :class:`flownar.stream.Narrator` drives them; nothing here decides when to speak or what to say.
"""
