"""Training every system (``flownar train``, ``python -m flownar.train``, also under ``deepspeed``): the settings
and profiles (:mod:`~flownar.train.config`), the model a run trains (:mod:`~flownar.train.model`), the run folder
and its checkpoints (:mod:`~flownar.train.resume`), plain and DeepSpeed optimisation
(:mod:`~flownar.train.steppers`), the loop (:mod:`~flownar.train.loop`) and launching several runs, on GPUs, from
the command line (:mod:`~flownar.train.launch`).
"""
