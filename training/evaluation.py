"""Scoring a model on a labelled dataset: the logits (sorted by length, sharded across processes) and
the metrics with what a report of the worst errors needs. The native trainer, Trainer's final
evaluation and evaluate_plm.py all end here."""
import numpy as np
import torch

from data_load import TextLookup, column_numpy, label_matrix, model_inputs
from data_load.labels import is_multi_label
from utils.metrics import classification_metrics, multi_label_metrics


def predict_logits(model, dataset, collate, batch_size, device, autocast, rank=0, world_size=1):
    """{row: logits} for this process's shard of the dataset (every world_size-th row), in batches of
    similar length (less padding)."""
    model = getattr(model, "module", model)  # plain forward: no DDP synchronisation for evaluation
    was_training = model.training
    model.eval()
    shard = np.arange(rank, len(dataset), world_size)
    order = shard[np.argsort(column_numpy(dataset, "length")[shard], kind="stable")].tolist()
    inputs = model_inputs(dataset)
    logits = {}
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            batch = collate(inputs.__getitems__(indices))
            batch = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "texts")}
            with autocast:
                output = model(**batch).logits.float().cpu().numpy()
            logits.update(zip(indices, output))
    model.train(was_training)
    return logits


def evaluation(logits, dataset, label_names, threshold=None, threshold_per_label=False):
    """Metrics plus what the report needs to list errors: logits, gold labels, texts (read when listed).
    Multi-label: gold labels are a 0/1 matrix, and the decision threshold is `threshold` (a number or one
    per label; None: the one that scores best on these examples, as on validation, or with
    `threshold_per_label` the best one for each label)."""
    logits = np.asarray(logits, dtype=np.float32)
    if is_multi_label(dataset):
        labels = label_matrix(dataset, len(label_names))
        metrics = multi_label_metrics(logits, labels, label_names, threshold, threshold_per_label)
    else:
        labels = column_numpy(dataset, "labels")
        metrics = classification_metrics(logits, labels, label_names)
    return {"metrics": metrics, "logits": logits, "labels": labels, "texts": TextLookup(dataset)}
