"""Integrations with training frameworks (optional extras): ``optlab.integrations.lightning`` (extra
``lightning``) and ``optlab.integrations.transformers`` (extra ``hf``)."""
