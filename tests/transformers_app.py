"""A tiny randomly initialised BERT classifier trained by ``OptlabTrainer``; run as a script under torchrun.

``torchrun --nproc-per-node 2 tests/transformers_app.py OUT PRESET ACCUMULATION MAX_GRAD_NORM`` trains
``STEPS`` steps on CPU (gloo) and writes each rank's parameters and the inputs it saw to ``OUT/rank<r>.pt``.
No weights or tokenizer are downloaded: the model is built from a config, the data is synthetic.
"""

from __future__ import annotations

import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

N, BATCH, SEQ, VOCAB, STEPS = 32, 4, 6, 30, 4
HP = {
    "sgd": dict(lr=0.05),
    "sgd-ph": dict(lr=0.05, every=2),
    "adahessian": dict(lr=0.01, every=2),
}


def make_model():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=SEQ,
        type_vocab_size=1,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).double()


class Synthetic(torch.utils.data.Dataset):
    """Random token ids and labels (fixed seed)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (N, SEQ), generator=g)
        self.labels = torch.randint(0, 3, (N,), generator=g)

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def trainer(out: str, preset: str, *, steps: int = STEPS, accumulation: int = 1, max_grad_norm: float = 0.0, **kw):
    """An ``OptlabTrainer`` (subclass that records every micro-batch it trains on, in order)."""
    from transformers import TrainingArguments

    from optlab.integrations.transformers import OptlabTrainer

    class Recording(OptlabTrainer):
        seen: list = []
        # BERT's classification loss is a mean that ignores num_items_in_batch (though its forward takes
        # **kwargs): the Trainer must divide it by the accumulation steps (transformers' documented switch),
        # and must not multiply it by the number of processes (average_tokens_across_devices=False below)
        loss_is_scaled_for_ga = False

        def training_step(self, model, inputs, *a, **k):
            self.seen.append({k: v.detach().clone() for k, v in inputs.items()})
            return super().training_step(model, inputs, *a, **k)

    args = TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=max_grad_norm,
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        average_tokens_across_devices=False,
        **kw,
    )
    return Recording(
        model=make_model(),
        args=args,
        train_dataset=Synthetic(),
        optimizer_name=preset,
        optimizer_hparams=HP[preset],
        optimizer_seed=0,
    )


if __name__ == "__main__":
    out, preset = sys.argv[1], sys.argv[2]
    accumulation, max_grad_norm = int(sys.argv[3]), float(sys.argv[4])
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    t = trainer(out, preset, accumulation=accumulation, max_grad_norm=max_grad_norm)
    t.train()
    from optlab.integrations.transformers import optlab_optimizer

    opt = optlab_optimizer(t.optimizer)
    torch.save(
        {
            "params": [p.detach() for p in t.model.parameters()],
            "seen": t.seen,
            "hvp_count": opt.hvp_count,
        },
        f"{out}/rank{t.args.process_index}.pt",
    )
