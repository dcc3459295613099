"""Pad a batch to its own longest sequence (dynamic padding), not to a fixed max_length."""
import numpy as np
import torch

from data_load.labels import multi_hot

# What a batch carries for the loss besides the model's inputs: the labels and, when distilling, the
# teacher's logits of each row (training/native_loop.py hands them to the loss by these names).
TARGETS = ("labels", "teacher_logits")
NO_LABEL = -100  # a row without a label (unlabelled text in distillation): torch's cross-entropy ignore_index


class TextClassificationCollator:
    """Turns dataset items into model inputs: `input_ids`, `attention_mask`, `token_type_ids`
    (if present), `labels` (if present: class ids or regression targets, or for multi-label examples 0/1 rows of
    num_labels floats; NO_LABEL for an item whose label is None, a row of them for multi-label, unless
    no item has one: then no labels), `teacher_logits` (if present: float rows) and, with with_text, the
    raw `texts` as a list.

    Serves as `Trainer(data_collator=...)` and as `DataLoader(collate_fn=...)`."""

    def __init__(self, tokenizer, pad_to_multiple_of=None, with_text=False, num_labels=None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pad_left = tokenizer.padding_side == "left"
        self.pad_to_multiple_of = pad_to_multiple_of
        self.with_text = with_text
        self.num_labels = num_labels  # multi-label: the width of the 0/1 label rows

    def __call__(self, items):
        width = max(len(item["input_ids"]) for item in items)
        if self.pad_to_multiple_of:  # tensor cores like multiples of 8 on GPU
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": self._pad([item["input_ids"] for item in items], width, self.pad_id),
            "attention_mask": self._pad([[1] * len(item["input_ids"]) for item in items], width, 0),
        }
        if "token_type_ids" in items[0]:
            batch["token_type_ids"] = self._pad([item["token_type_ids"] for item in items], width, 0)
        labelled = [item for item in items if item.get("labels") is not None]
        if labelled and isinstance(labelled[0]["labels"], list):  # label ids of multi-label examples
            rows = [i for i, item in enumerate(items) for _ in item["labels"] or ()]
            ids = [j for item in items for j in item["labels"] or ()]
            labels = multi_hot(rows, ids, len(items), self.num_labels, np.float32)
            labels[[item["labels"] is None for item in items]] = NO_LABEL
            batch["labels"] = torch.from_numpy(labels)
        elif labelled:  # class ids, or numbers (regression)
            floats = isinstance(labelled[0]["labels"], float)
            batch["labels"] = torch.tensor([NO_LABEL if item["labels"] is None else item["labels"] for item in items],
                                           dtype=torch.float32 if floats else torch.long)
        if "teacher_logits" in items[0]:
            batch["teacher_logits"] = torch.tensor([item["teacher_logits"] for item in items], dtype=torch.float32)
        if self.with_text:
            batch["texts"] = [item["text"] for item in items]
        return batch

    def _pad(self, rows, width, value):
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, row in enumerate(rows):
            if self.pad_left:
                out[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            else:
                out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out
