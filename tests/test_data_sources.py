"""The data module on 🤗 datasets: Parquet and save_to_disk inputs, local datasets, the tokenization
cache, seeded subsets, --max_steps; in-process where it can be, the real scripts where it must."""
import json
import re

import pytest
from conftest import data_options, run_script, write_tsv

from data_load import column_numpy, encode_splits, load_splits, read_examples
from utils.errors import UserError

ROWS = [("pos", "a fine film"), ("neg", "dull and long"), ("pos", "loved it"), ("neg", "a waste of time"),
        ("pos", "great acting"), ("neg", "the plot makes no sense")] * 10


def args_for(train_fn, tmp_path, **flags):
    return data_options(**{"train_fn": train_fn, "valid_fn": None, "test_fn": None, "valid_ratio": 0.2, "seed": 0,
                              "text_column": None, "text_pair_column": None, "label_column": None,
                              "cache_dir": tmp_path / "cache", **flags})


def texts_and_labels(split):
    return list(zip(split.column("text").to_pylist(), split.column("label").to_pylist()))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    from utils.hub import default_model_path
    return AutoTokenizer.from_pretrained(default_model_path())


# --- sources --------------------------------------------------------------------------------------

def test_parquet_reads_like_the_same_tsv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"id": list(range(len(ROWS))), "review": [t for _, t in ROWS],
                             "label": [l for l, _ in ROWS]}), tmp_path / "train.parquet")
    from_parquet = load_splits(args_for(tmp_path / "train.parquet", tmp_path, text_column="review"))
    from_tsv = load_splits(args_for(write_tsv(tmp_path / "train.tsv", ROWS), tmp_path))
    assert from_parquet.labels == from_tsv.labels == ["neg", "pos"]
    assert texts_and_labels(from_parquet.train) == texts_and_labels(from_tsv.train)
    assert texts_and_labels(from_parquet.valid) == texts_and_labels(from_tsv.valid)


def test_parquet_bad_row_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    labels = ["pos", "neg"] * 20 + [None]
    pq.write_table(pa.table({"text": [f"text {i}" for i in range(41)], "label": labels}), tmp_path / "t.parquet")
    with pytest.raises(UserError, match=r"t\.parquet:41: empty value in label column 'label'"):
        load_splits(args_for(tmp_path / "t.parquet", tmp_path))
    (tmp_path / "x.parquet").write_text("pos\tnot parquet\n")
    with pytest.raises(UserError, match=r"x\.parquet: not a readable Parquet file"):
        load_splits(args_for(tmp_path / "x.parquet", tmp_path))


def test_save_to_disk_dict_gives_its_splits_and_class_names(tmp_path):
    import datasets
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})

    def part(rows):
        return datasets.Dataset.from_dict({"sentence": [t for _, t in rows],
                                           "label": [int(l == "pos") for l, _ in rows]}, features=features)
    saved = datasets.DatasetDict({"train": part(ROWS), "validation": part(ROWS[:12]),
                                  "test": datasets.Dataset.from_dict({"sentence": ["x", "y"], "label": [-1, -1]},
                                                                     features=features)})
    saved.save_to_disk(tmp_path / "saved")
    splits = load_splits(args_for(tmp_path / "saved", tmp_path))
    assert splits.labels == ["negative", "positive"]  # ClassLabel ids read as their names
    assert len(splits.train) == len(ROWS) and len(splits.valid) == 12  # its own validation split, not a 20% cut
    assert splits.test is None  # GLUE-style unlabelled test split (-1): left out
    assert splits.train.column("label").to_pylist()[:2] == ["positive", "negative"]
    # one split of it, as a file flag; and a dict where a single split is wanted
    one = load_splits(args_for(tmp_path / "saved" / "train", tmp_path, valid_fn=tmp_path / "saved" / "validation"))
    assert len(one.valid) == 12
    with pytest.raises(UserError, match="holds several splits"):
        load_splits(args_for(write_tsv(tmp_path / "t.tsv", ROWS), tmp_path, valid_fn=tmp_path / "saved"))


def test_saved_format_and_odd_values(tmp_path):
    """A dataset saved with a torch format reads as plain values; binary texts and lone surrogates are
    refused with the row, not turned into 'tensor(0)' labels, "b'...'" texts or a traceback."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    saved = datasets.Dataset.from_dict({"text": [t for _, t in ROWS], "label": [int(l == "pos") for l, _ in ROWS]})
    saved.with_format("torch").save_to_disk(tmp_path / "torch_format")
    assert load_splits(args_for(tmp_path / "torch_format", tmp_path)).labels == ["0", "1"]
    pq.write_table(pa.table({"text": [b"raw", b"bytes"] * 5, "label": ["a", "b"] * 5}), tmp_path / "b.parquet")
    with pytest.raises(UserError, match=r"b\.parquet:1: field 'text' holds binary data"):
        load_splits(args_for(tmp_path / "b.parquet", tmp_path))
    (tmp_path / "s.jsonl").write_text('{"text": "fine", "label": "a"}\n{"text": "bad \\ud800", "label": "b"}\n')
    with pytest.raises(UserError, match=r"s\.jsonl:2: field 'text' holds an unpaired surrogate"):
        load_splits(args_for(tmp_path / "s.jsonl", tmp_path))


def test_tokenizer_input_names_are_part_of_the_cache_key(tmp_path, tokenizer, capsys):
    """A DistilBERT-style checkpoint with a BERT vocabulary takes no token_type_ids: it must not reuse
    ids tokenized for BERT."""
    from transformers import AutoTokenizer
    from utils.hub import default_model_path
    args = args_for(write_tsv(tmp_path / "t.tsv", ROWS), tmp_path)
    with_types, _, _ = encode_splits(load_splits(args), tokenizer, 32, cache_dir=args.cache_dir)
    plain = AutoTokenizer.from_pretrained(default_model_path(), model_input_names=["input_ids", "attention_mask"])
    without, _, _ = encode_splits(load_splits(args), plain, 32, cache_dir=args.cache_dir)
    assert "token_type_ids" in with_types.column_names and "token_type_ids" not in without.column_names
    assert capsys.readouterr().err.count("tokenizing 60 examples") == 2


def test_local_dataset_directory_as_dataset_name(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + "".join(f"{t},{l}\n" for l, t in ROWS))
    (folder / "test.csv").write_text("text,label\nnice one,pos\nawful,neg\n")
    splits = load_splits(args_for(None, tmp_path, dataset_name=str(folder)))
    assert splits.labels == ["neg", "pos"] and len(splits.test) == 2 and len(splits.valid) == 12
    (folder / "test.csv").write_text("text\nnice one\nawful\n")  # a test split without labels is left out
    assert load_splits(args_for(None, tmp_path, dataset_name=str(folder))).test is None


def test_a_directory_that_is_no_saved_dataset(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="not one written by Dataset.save_to_disk"):
        load_splits(args_for(tmp_path / "d", tmp_path))


def test_unreachable_hub_dataset_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="--dataset_name someone/reviews: the Hugging Face hub cannot be reached"):
        load_splits(args_for(None, tmp_path, dataset_name="someone/reviews"))


def test_error_deep_in_a_large_file_leaves_no_cache_entry(tmp_path):
    lines = [f"{'pos' if i % 2 else 'neg'}\tsentence number {i}\n" for i in range(30_000)]
    lines[24_999] = "no tab on this line\n"
    path = tmp_path / "big.tsv"
    path.write_text("".join(lines))
    with pytest.raises(UserError, match=r"big\.tsv:25000: no tab found"):
        load_splits(args_for(path, tmp_path))
    parsed = tmp_path / "cache" / "parsed"
    assert [p.name for p in parsed.iterdir() if not p.name.endswith(".lock")] == []


def test_reading_matches_the_list_reader(tmp_path):
    """The Arrow table holds what read_examples reads: CSV quotes, pairs, BOM, line numbers."""
    path = tmp_path / "q.csv"
    path.write_bytes('\ufefflabel,text,text_pair\r\npos,"a\tb, with\nnewline",x\nneg,"say ""hi""",y\n'
                     'pos,,z\nneg,fine,w\n'.encode())
    examples = read_examples(path, text_pair_column="text_pair")
    split = load_splits(args_for(path, tmp_path, text_pair_column="text_pair", valid_ratio=0.5)).train
    rows = split.rows
    assert rows["text"] == [e.text for e in examples] and rows["line"] == [e.line for e in examples] == [2, 4, 6]
    assert rows["text_pair"] == [e.text_pair for e in examples] and split.has_pairs


# --- subsets and the tokenization cache ------------------------------------------------------------

def test_max_samples_take_a_seeded_subset(tmp_path):
    path = write_tsv(tmp_path / "t.tsv", [(l, f"{t} {i}") for i, (l, t) in enumerate(ROWS)])
    full = load_splits(args_for(path, tmp_path))
    one = load_splits(args_for(path, tmp_path, max_train_samples=10, max_eval_samples=5))
    two = load_splits(args_for(path, tmp_path, max_train_samples=10, max_eval_samples=5))
    other = load_splits(args_for(path, tmp_path, max_train_samples=10, max_eval_samples=5, seed=1))
    assert len(one.train) == 10 and len(one.valid) == 5
    assert texts_and_labels(one.train) == texts_and_labels(two.train) != texts_and_labels(other.train)
    assert set(texts_and_labels(one.train)) <= set(texts_and_labels(full.train))
    assert set(texts_and_labels(one.valid)) <= set(texts_and_labels(full.valid))


def cache_files(directory):
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.rglob("*.arrow")}


def test_second_run_reuses_the_tokenized_cache(tmp_path, tokenizer, capsys):
    path = write_tsv(tmp_path / "t.tsv", ROWS)
    args = args_for(path, tmp_path)
    train, valid, _ = encode_splits(load_splits(args), tokenizer, 32, cache_dir=args.cache_dir)
    first = capsys.readouterr().err
    assert first.count("tokenizing 60 examples") == 1  # the file once, for both splits
    files = cache_files(tmp_path / "cache")
    assert len(files) == 2  # one parsed table, one tokenized table

    again, _, _ = encode_splits(load_splits(args), tokenizer, 32, cache_dir=args.cache_dir)
    second = capsys.readouterr().err
    assert "tokenizing" not in second and "reusing tokenized" in second
    assert cache_files(tmp_path / "cache") == files  # the same files, not rewritten
    assert again["input_ids"] == train["input_ids"] and list(column_numpy(again, "labels")) == list(
        column_numpy(train, "labels"))
    assert list(column_numpy(train, "length")) == [len(ids) for ids in train["input_ids"]]

    # a new max_length, or new content under the same name, is tokenized anew
    encode_splits(load_splits(args), tokenizer, 16, cache_dir=args.cache_dir)
    assert "tokenizing 60 examples" in capsys.readouterr().err
    write_tsv(path, ROWS + [("neg", "one more line")])
    encode_splits(load_splits(args), tokenizer, 32, cache_dir=args.cache_dir)
    assert "tokenizing 61 examples" in capsys.readouterr().err


def test_parallel_tokenization_gives_the_same_ids(tmp_path, tokenizer, capsys):
    path = write_tsv(tmp_path / "t.tsv", [(l, f"{t} {i}") for i, (l, t) in enumerate(ROWS * 5)])
    one, _, _ = encode_splits(load_splits(args_for(path, tmp_path)), tokenizer, 32, workers=1,
                              cache_dir=tmp_path / "one")
    two, _, _ = encode_splits(load_splits(args_for(path, tmp_path)), tokenizer, 32, workers=2,
                              cache_dir=tmp_path / "two")
    assert "(2 processes)" in capsys.readouterr().err
    assert one["input_ids"] == two["input_ids"] and one["text"] == two["text"]
    assert len(list((tmp_path / "two" / "tokens").rglob("*.arrow"))) == 2  # a shard per process


# --- the scripts --------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("script", ["finetune_plm_native.py", "finetune_plm_hf.py"])
def test_max_steps_and_arrow_inputs(tmp_path, tiny_model, script):
    """--max_steps ends training after N optimizer steps (schedule over N); Parquet and save_to_disk
    inputs train as files do; a second run says it reused the tokenized data."""
    import datasets
    rows = ROWS * 4
    data = {"text": [t for _, t in rows], "label": [l for l, _ in rows]}
    if script.endswith("native.py"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table(data), tmp_path / "train.parquet")
        train_fn = tmp_path / "train.parquet"
    else:
        datasets.DatasetDict({"train": datasets.Dataset.from_dict(data),
                              "validation": datasets.Dataset.from_dict({k: v[:20] for k, v in data.items()})}
                             ).save_to_disk(tmp_path / "saved")
        train_fn = tmp_path / "saved"
    common = ["--train_fn", train_fn, "--pretrained_model_name", tiny_model, "--batch_size", 8, "--max_steps", 4,
              "--cache_dir", tmp_path / "cache"]
    first = run_script(script, "--model_fn", tmp_path / "m1", *common)
    record = json.loads((tmp_path / "m1" / "training_args.json").read_text())
    assert record["optimizer_steps"] == 4 and record["max_steps"] == 4
    assert "optimizer steps = 4 (" in first.stderr and "epochs = 1 (--max_steps 4)" in first.stderr
    history = json.loads((tmp_path / "m1" / "history.json").read_text())
    assert [row["step"] for row in history] == [4] and history[0]["epoch"] == 1
    assert re.search(r"^tokenizing \d+ examples", first.stderr, re.M)
    second = run_script(script, "--model_fn", tmp_path / "m2", *common)
    assert "reusing tokenized" in second.stderr and not re.search(r"^tokenizing \d+ examples", second.stderr, re.M)
    assert json.loads((tmp_path / "m2" / "metrics.json").read_text())["valid"]["n_examples"] == (
        20 if train_fn.is_dir() else len(rows) // 10)


@pytest.mark.slow
def test_dataset_name_without_hub_is_one_line_and_fast(tmp_path):
    result = run_script("finetune_plm_native.py", "--model_fn", tmp_path / "m", "--dataset_name", "someone/reviews",
                        check=False, timeout=60, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --dataset_name someone/reviews: the Hugging Face hub cannot be reached and the dataset is not in "
        "the local cache. Download it where there is a network and pass it as files (--train_fn train.parquet ...) "
        "or as a directory written by DatasetDict.save_to_disk (--train_fn DIR)"]
    assert not (tmp_path / "m").exists()
