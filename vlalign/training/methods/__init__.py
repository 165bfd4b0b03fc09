"""Training methods driven by the one loop (:func:`vlalign.training.loop.fit`)."""
