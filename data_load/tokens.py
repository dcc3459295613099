"""Token ids without transformers: a checkpoint's tokenizer.json, set up as transformers sets it up.

The ONNX classifier tokenizes with this (tokenizers and numpy only, no torch, no transformers);
export_plm.py checks that it gives the same ids as the transformers tokenizer before it writes a model."""
import json
from pathlib import Path

import numpy as np

from data_load.long_text import cap_characters, windows

# A token never covers less than one character, so max_length tokens fit well inside this many
# characters per token; cutting longer texts first keeps a 1 MB line from costing seconds of tokenizing.
CHARS_PER_TOKEN_CAP = 32
MIN_LENGTH = 8  # shortest --max_length: room for the special tokens ([CLS], [SEP], a pair's [SEP]) and a few words


class FastTokenizer:
    """`tokenizer(texts, pairs, truncation=True, max_length=max_length)` of transformers, from tokenizer.json:
    truncation at max_length (longest_first for pairs, on the checkpoint's truncation side), no padding;
    batches are padded with the checkpoint's pad token on its padding side, as the collator pads."""

    def __init__(self, model_fn, max_length):
        from tokenizers import Tokenizer
        model_fn = Path(model_fn)
        config_fn = model_fn / "tokenizer_config.json"
        config = json.loads(config_fn.read_text(encoding="utf-8")) if config_fn.exists() else {}
        self.tokenizer = Tokenizer.from_file(str(model_fn / "tokenizer.json"))
        self.tokenizer.no_padding()  # tokenizer.json may carry a fixed padding from the pretrained model
        self.untruncated = Tokenizer.from_file(str(model_fn / "tokenizer.json"))  # head_tail, sliding: whole texts
        self.untruncated.no_padding()
        self.untruncated.no_truncation()
        self.tokenizer.enable_truncation(max_length, strategy="longest_first",
                                         direction=config.get("truncation_side", "right"))
        self.max_length = max_length
        pad_token = config.get("pad_token")
        if isinstance(pad_token, dict):  # older tokenizer_config.json files store an AddedToken
            pad_token = pad_token.get("content")
        pad_id = self.tokenizer.token_to_id(pad_token) if pad_token else None
        self.pad_id = pad_id if pad_id is not None else 0
        self.pad_left = config.get("padding_side") == "left"

    def encode(self, items):
        """(input_ids, token_type_ids) lists for (text, pair) items; pair None for single sentences."""
        cap = self.max_length * CHARS_PER_TOKEN_CAP
        inputs = [text[:cap] if pair is None else (text[:cap], pair[:cap]) for text, pair in items]
        encodings = self.tokenizer.encode_batch(inputs)
        return [e.ids for e in encodings], [e.type_ids for e in encodings]

    def encode_inputs(self, items, long_text="truncate", stride=None):
        """(input_ids, token_type_ids, item of each input) for (text, pair) items, texts longer than max_length
        handled by long_text (data_load.long_text); the third value is None unless sliding windows made more
        inputs than items. Sentence pairs are truncated."""
        if long_text != "truncate" and all(pair is None for _, pair in items):
            return self.encode_long([text for text, _ in items], long_text, stride)
        return (*self.encode(items), None)

    def encode_long(self, texts, long_text, stride):
        """head_tail or sliding (data_load.long_text) on whole texts, as data_load.encoding does with transformers."""
        texts = [cap_characters(text, self.max_length, long_text, CHARS_PER_TOKEN_CAP) for text in texts]
        ids, type_ids, text_of_item = [], [], []
        for i, e in enumerate(self.untruncated.encode_batch(texts)):
            for window_ids, window_types in windows(e.ids, e.type_ids, e.special_tokens_mask, self.max_length,
                                                    long_text, stride):
                ids.append(window_ids)
                type_ids.append(window_types)
                text_of_item.append(i)
        return ids, type_ids, text_of_item if long_text == "sliding" else None

    def batch(self, ids, type_ids):
        """int64 `input_ids`, `attention_mask`, `token_type_ids` arrays padded to the longest row."""
        width = max(map(len, ids))
        arrays = {name: np.full((len(ids), width), value, dtype=np.int64)
                  for name, value in (("input_ids", self.pad_id), ("attention_mask", 0), ("token_type_ids", 0))}
        for i, (row, types) in enumerate(zip(ids, type_ids)):
            span = slice(width - len(row), width) if self.pad_left else slice(0, len(row))
            arrays["input_ids"][i, span] = row
            arrays["attention_mask"][i, span] = 1
            arrays["token_type_ids"][i, span] = types
        return arrays
