"""Pipelines that compose data, training, evaluation and saving into one run (``vlalign train``, pretraining)."""
