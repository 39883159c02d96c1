"""One training run: :class:`~optlab.training.config.RunConfig`, the loop
(:func:`~optlab.training.loop.train`), checkpoints, tasks, and multi-process trials (ranks,
launch, the DDP worker)."""
