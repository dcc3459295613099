"""Token ids for sentences: one function for a list in memory (the classifier's chunks) and, on top of
it, Dataset.map for an Arrow table, in parallel and cached on disk."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from data_load.arrow import select_rows
from data_load.cache import build_entry, build_lock, cache_root, content_key, note, read_meta, write_meta
from data_load.long_text import cap_characters, windows
from data_load.tokens import CHARS_PER_TOKEN_CAP
from utils.processes import run_workers
from utils.runtime import usable_cpus

MAP_BATCH = 1000  # sentences per tokenizer call inside Dataset.map
PARALLEL_FROM = 50_000  # rows; below this, starting worker processes costs more than it saves
QUIET_BELOW = 10_000  # rows; smaller data is tokenized in well under a second: no progress bar


def encode_texts(tokenizer, texts, pairs, max_length, long_text="truncate", stride=None):
    """`input_ids` (and `token_type_ids` where the tokenizer makes them), at most max_length tokens,
    not padded. Texts are first cut to CHARS_PER_TOKEN_CAP characters per token of max_length (head_tail:
    at both ends; sliding: not cut). A text longer than max_length is truncated, cut to its head and tail,
    or (sliding) becomes a list of windows: then each text's `input_ids` is a list of windows' ids
    (data_load.long_text). Sentence pairs are always truncated."""
    if long_text == "truncate" or pairs is not None:
        cap = max_length * CHARS_PER_TOKEN_CAP
        texts = [text[:cap] for text in texts]
        if pairs is not None:
            pairs = [(pair or "")[:cap] for pair in pairs]
        return tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False,
                         return_attention_mask=False)
    from transformers.utils import logging as hf_logging
    texts = [cap_characters(text, max_length, long_text, CHARS_PER_TOKEN_CAP) for text in texts]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "longer than the specified maximum sequence length": cut below
    try:
        encoded = tokenizer(texts, truncation=False, padding=False, return_attention_mask=False,
                            return_special_tokens_mask=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    with_types = "token_type_ids" in encoded
    ids_out, types_out = [], []
    for i, ids in enumerate(encoded["input_ids"]):
        types = encoded["token_type_ids"][i] if with_types else [0] * len(ids)
        cut = windows(ids, types, encoded["special_tokens_mask"][i], max_length, long_text, stride)
        if long_text == "sliding":
            ids_out.append([w for w, _ in cut])
            types_out.append([t for _, t in cut])
        else:
            ids_out.append(cut[0][0])
            types_out.append(cut[0][1])
    return {"input_ids": ids_out, **({"token_type_ids": types_out} if with_types else {})}


def default_workers(n_rows):
    """--preprocessing_num_workers when not given: one process for small data, else one per core (at most 8)."""
    return 1 if n_rows < PARALLEL_FROM else max(1, min(usable_cpus(), 8))


def capped_workers(asked, n_rows):
    """--preprocessing_num_workers as given, but never more processes than cores (or rows): more only
    add start-up and memory, each worker being a process of its own."""
    if asked is None:
        return default_workers(n_rows)
    cap = max(1, min(usable_cpus(), n_rows))
    if asked > cap:
        note(f"note: --preprocessing_num_workers {asked}: using {cap}, the most that can help here "
             f"({usable_cpus()} cores, {n_rows:,} examples)")
    return min(asked, cap)


def tokenizer_fingerprint(tokenizer):
    """What the token ids depend on: the tokenizer's full definition (vocabulary, normalizer, added
    tokens) without the truncation/padding state that calling it changes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:  # a slow (Python) tokenizer: its vocabulary and settings (lower-casing, ...)
        state = [sorted(tokenizer.get_vocab().items()), repr(sorted(tokenizer.init_kwargs.items()))]
    # model_input_names decides whether token_type_ids are kept: a DistilBERT checkpoint with a BERT
    # vocabulary must not reuse ids tokenized for BERT
    blob = json.dumps([type(tokenizer).__name__, tokenizer.truncation_side, list(tokenizer.model_input_names), state],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def tokenize(rows, parsed_key, name, tokenizer, max_length, has_pairs, workers=None, cache_dir=None,
             indices=None, long_text="truncate", stride=None):
    """`rows` (a parsed Arrow dataset, or the `indices` of it) with `input_ids`, `token_type_ids` where
    the model uses them, and `length` added, from the cache when the same rows were tokenized by the
    same tokenizer at the same max_length before (the run says which on stderr)."""
    import datasets
    root = cache_root(cache_dir) / "tokens"
    index_digest = hashlib.blake2b(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest() if indices is not None else None
    windowing = () if long_text == "truncate" or has_pairs else (long_text, stride)  # truncate: keys as before
    key = content_key("tokens", parsed_key, index_digest, tokenizer_fingerprint(tokenizer), max_length, *windowing)
    directory = root / key
    n_rows = len(rows) if indices is None else len(indices)
    with build_lock(root, key):
        meta = read_meta(directory)
        if meta is None:
            shutil.rmtree(directory, ignore_errors=True)
            workers = capped_workers(workers, n_rows)
            note(f"tokenizing {n_rows:,} examples of {name} ({workers} process{'es' if workers > 1 else ''}); "
                 f"cached in {directory}")
            # A whole source is stored as token columns only, read beside its parsed table; a subset keeps
            # its texts, since its rows are not the parsed table's.
            job = TokenizeJob(rows, indices, tokenizer, max_length, has_pairs, key, long_text, stride)
            build_entry(directory, lambda tmp: job.run(tmp, workers, name))
            meta = read_meta(directory, verify=False)
        else:
            note(f"reusing tokenized {name} ({n_rows:,} examples) from {directory}")
    parts = [datasets.Dataset.from_file(str(directory / file)) for file in meta["files"]]
    tokens = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return tokens if indices is not None else datasets.concatenate_datasets([rows, tokens], axis=1)


class TokenizeJob:
    """What a tokenizing process needs, picklable: the parsed table's file (and the subset's indices), the
    tokenizer, the long-text settings and the output's features. Run in this process, or by worker
    processes that each tokenize a contiguous shard into a file of its own (data_load.tokenize_worker)."""

    def __init__(self, rows, indices, tokenizer, max_length, has_pairs, key, long_text="truncate", stride=None):
        import datasets
        self.rows_file = rows.cache_files[0]["filename"]
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.n_rows = len(rows) if indices is None else len(indices)
        self.tokenizer, self.max_length, self.has_pairs, self.key = tokenizer, max_length, has_pairs, key
        self.long_text, self.stride = long_text, stride
        self.sliding = long_text == "sliding" and not has_pairs
        self.with_types = "token_type_ids" in tokenizer("a")
        keep_text = indices is not None
        features = rows.features.copy() if keep_text else datasets.Features()

        def per_text(feature):  # sliding: each text holds a list of windows
            return datasets.List(feature) if self.sliding else feature
        features["input_ids"] = per_text(datasets.List(datasets.Value("int32")))
        if self.with_types:
            features["token_type_ids"] = per_text(datasets.List(datasets.Value("int8")))
        features["length"] = per_text(datasets.Value("int32"))
        self.features, self.remove = features, None if keep_text else rows.column_names

    def run(self, directory, workers, name):
        import datasets
        files = [self.shard_file(index) for index in range(workers)]
        quiet = self.n_rows < QUIET_BELOW
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # ours instead: one bar over all the workers
        try:
            if workers == 1:
                from tqdm.auto import tqdm
                with tqdm(total=self.n_rows, desc="tokenizing", unit=" examples", disable=quiet) as bar:
                    self.tokenize_shard(0, 1, directory, bar.update)
            else:
                run_workers("data_load.tokenize_worker", self, directory, workers, self.n_rows, "tokenizing",
                            f"tokenizing {name}", quiet)
        finally:
            if bars:
                datasets.enable_progress_bars()
        write_meta(directory, {"files": files, "n_rows": self.n_rows})

    @staticmethod
    def shard_file(index):
        return f"data-{index:05d}.arrow"

    def tokenize_shard(self, index, n_shards, directory, report):
        """Shard `index` of `n_shards` (contiguous) into its Arrow file in `directory`; report(n) after
        each batch."""
        import datasets
        rows = datasets.Dataset.from_file(self.rows_file)
        if self.indices is not None:
            rows = select_rows(rows, self.indices)
        shard = rows if n_shards == 1 else rows.shard(n_shards, index, contiguous=True)
        tokenizer, max_length, has_pairs, with_types = self.tokenizer, self.max_length, self.has_pairs, self.with_types
        long_text, stride, sliding = self.long_text, self.stride, self.sliding

        def encode(batch):
            encoded = encode_texts(tokenizer, batch["text"], batch["text_pair"] if has_pairs else None, max_length,
                                   long_text, stride)
            lengths = ([[len(ids) for ids in text] for text in encoded["input_ids"]] if sliding
                       else [len(ids) for ids in encoded["input_ids"]])
            out = {"input_ids": encoded["input_ids"], "length": lengths}
            if with_types:
                out["token_type_ids"] = encoded["token_type_ids"]
            report(len(batch["text"]))
            return out
        shard.map(encode, batched=True, batch_size=MAP_BATCH, features=self.features, remove_columns=self.remove,
                  cache_file_name=str(Path(directory) / self.shard_file(index)), new_fingerprint=f"{self.key}-{index}")
