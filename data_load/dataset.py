"""Tokenize once, keep lengths: the dataset both trainers and the classifier use."""
import torch

from utils.tokens import CHARS_PER_TOKEN_CAP


class TextClassificationDataset(torch.utils.data.Dataset):
    """Examples tokenized up front (truncated at max_length, not padded) with their lengths.

    Items are dicts with `input_ids` (and `token_type_ids` where the model uses them), `labels`
    when label2id is given, and `text` (the raw sentence) when with_text is set."""

    def __init__(self, examples, tokenizer, max_length, label2id=None, with_text=False):
        cap = max_length * CHARS_PER_TOKEN_CAP
        texts = [example.text[:cap] for example in examples]
        pairs = None
        if any(example.text_pair is not None for example in examples):
            pairs = [(example.text_pair or "")[:cap] for example in examples]
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length,
                            padding=False, return_attention_mask=False)
        self.input_ids = encoded["input_ids"]
        self.token_type_ids = encoded.get("token_type_ids")
        self.lengths = [len(ids) for ids in self.input_ids]
        self.labels = [label2id[example.label] for example in examples] if label2id else None
        self.texts = [example.text for example in examples] if with_text else None
        self.pairs = [example.text_pair for example in examples] if with_text and pairs else None

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, i):
        item = {"input_ids": self.input_ids[i]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[i]
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.texts is not None:
            item["text"] = self.texts[i] if self.pairs is None else f"{self.texts[i]}\t{self.pairs[i]}"
        return item
