"""The optimizer: hyperparameter declarations, selectors, rules and partition, Hessian-vector
products, closures, ``torch.compile`` support, :class:`~optlab.optim.optimizer.RuleOptimizer` and
its data-parallel maths. The bottom layer: imports nothing else of optlab."""
