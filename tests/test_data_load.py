"""Readers, label mapping, splits, dataset, collator and sampler, on small files written here."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import data_options
from transformers import AutoTokenizer

from data_load import (LengthGroupedBatchSampler, TextClassificationCollator, TextClassificationDataset, load_splits,
                       read_examples)
from data_load.labels import sorted_labels
from data_load.validation import split_indices
from utils.errors import UserError
from utils.hub import default_model_path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_path())


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


# --- readers ---------------------------------------------------------------------------------------

def test_reference_format(tmp_path):
    path = write(tmp_path / "a.tsv", "positive\tgreat film\nnegative\tboring\n\npositive\t재밌어요 ㅋㅋ\n")
    examples = read_examples(path)
    assert [(e.label, e.text, e.line) for e in examples] == [
        ("positive", "great film", 1), ("negative", "boring", 2), ("positive", "재밌어요 ㅋㅋ", 4)]


def test_reference_format_with_pair(tmp_path):
    examples = read_examples(write(tmp_path / "p.tsv", "1\tA man eats.\tSomeone eats.\n"))
    assert (examples[0].label, examples[0].text, examples[0].text_pair) == ("1", "A man eats.", "Someone eats.")


def test_tsv_with_header_keeps_quotes(tmp_path):
    # NSMC-style: pandas-quoted documents must come back exactly as stored
    path = write(tmp_path / "nsmc.tsv", 'id\tdocument\tlabel\n1\t"""quoted"" title"\t0\n2\tplain\t1\n')
    examples = read_examples(path, text_column="document", label_column="label")
    assert [e.text for e in examples] == ['"""quoted"" title"', "plain"]
    assert [e.line for e in examples] == [2, 3]


def test_csv_with_quoted_tabs_and_newlines(tmp_path):
    path = write(tmp_path / "q.csv", 'label,text\r\npos,"a\tb, with\nnewline"\nneg,"say ""hi"""\n')
    examples = read_examples(path)
    assert [(e.label, e.text) for e in examples] == [("pos", "a\tb, with\nnewline"), ("neg", 'say "hi"')]


def test_csv_pairs_and_positional_columns(tmp_path):
    path = write(tmp_path / "ag.csv", '"3","Title one","Body one"\n"1","Title two","Body two"\n')
    examples = read_examples(path, text_column="1", text_pair_column="2", label_column="0")
    assert [(e.label, e.text, e.text_pair) for e in examples] == [("3", "Title one", "Body one"),
                                                                   ("1", "Title two", "Body two")]


def test_jsonl_with_integer_labels(tmp_path):
    rows = [{"sentence": "ok", "label": 1}, {"sentence": "bad", "label": 0}]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    assert [(e.text, e.label) for e in read_examples(path)] == [("ok", "1"), ("bad", "0")]


def test_bom_and_mixed_line_endings(tmp_path):
    path = write(tmp_path / "m.tsv", b"\xef\xbb\xbfpos\tone\r\nneg\ttwo\rpos\tthree\n")
    assert [(e.label, e.text) for e in read_examples(path)] == [("pos", "one"), ("neg", "two"), ("pos", "three")]


def test_long_line_is_read(tmp_path, tokenizer):
    long_text = "word " * 250_000  # over 1 MB
    examples = read_examples(write(tmp_path / "l.tsv", f"pos\t{long_text}\nneg\tshort\n"))
    dataset = TextClassificationDataset(examples, tokenizer, max_length=32, label2id={"neg": 0, "pos": 1})
    assert dataset.lengths == [32, 3]


@pytest.mark.parametrize("content, expected", [
    ("pos\tok\nno tab here\n", "bad.tsv:2: no tab found"),
    (b"pos\tok\nneg\t\xff\xfe broken\n", "bad.tsv:2: is not valid UTF-8"),
    (b"pos\tok\nneg\tnul\x00byte\n", "bad.tsv:2: contains a NUL byte"),
    ("", "bad.tsv: no examples found"),
    ("\tno label\n", "bad.tsv:1: empty label"),
])
def test_bad_reference_files(tmp_path, content, expected):
    with pytest.raises(UserError, match=expected.replace(".", r"\.")):
        read_examples(write(tmp_path / "bad.tsv", content))


def test_header_only_and_empty_label(tmp_path):
    with pytest.raises(UserError, match="no examples found"):
        read_examples(write(tmp_path / "h.csv", "text,label\n"))
    with pytest.raises(UserError, match=r"e\.csv:3: empty value in label column"):
        read_examples(write(tmp_path / "e.csv", "text,label\nfine,1\nmissing,\n"))


def test_missing_file_and_unknown_column(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_examples(tmp_path / "absent.tsv")
    with pytest.raises(UserError, match="no column 'review'.*columns: text, label"):
        read_examples(write(tmp_path / "c.csv", "text,label\na,1\n"), text_column="review")


# --- labels and splits -----------------------------------------------------------------------------

def test_label_mapping_is_sorted_and_stable(tmp_path):
    rows = [("joy", "a"), ("anger", "b"), ("sadness", "c"), ("joy", "d")]
    one = read_examples(write(tmp_path / "1.tsv", "".join(f"{l}\t{t}\n" for l, t in rows)))
    two = read_examples(write(tmp_path / "2.tsv", "".join(f"{l}\t{t}\n" for l, t in reversed(rows))))
    assert label_list(one, "1") == label_list(two, "2") == ["anger", "joy", "sadness"]


def test_integer_labels_sort_numerically(tmp_path):
    examples = read_examples(write(tmp_path / "n.tsv", "10\ta\n2\tb\n1\tc\n"))
    assert label_list(examples, "n") == ["1", "2", "10"]


def test_single_class_and_too_many_labels(tmp_path):
    with pytest.raises(UserError, match="only one class"):
        label_list(read_examples(write(tmp_path / "s.tsv", "pos\ta\npos\tb\n")), "s.tsv")
    many = "".join(f"id{i}\ttext {i}\n" for i in range(10_001))
    with pytest.raises(UserError, match="probably not the label column"):
        label_list(read_examples(write(tmp_path / "m.tsv", many)), "m.tsv")


def test_seeded_stratified_split(tmp_path):
    rows = [("a" if i % 4 else "b", f"text {i}") for i in range(200)]
    examples = read_examples(write(tmp_path / "s.tsv", "".join(f"{l}\t{t}\n" for l, t in rows)))
    train1, valid1 = split_off_validation(examples, 0.2, seed=1)
    train2, valid2 = split_off_validation(examples, 0.2, seed=1)
    _, valid3 = split_off_validation(examples, 0.2, seed=2)
    assert [e.text for e in valid1] == [e.text for e in valid2]
    assert [e.text for e in valid1] != [e.text for e in valid3]
    assert Counter(e.label for e in valid1) == {"a": 30, "b": 10}  # class shares kept
    assert len(train1) == 160 and not {e.text for e in train1} & {e.text for e in valid1}


def test_unseen_validation_label(tmp_path):
    train = write(tmp_path / "t.tsv", "pos\ta\nneg\tb\n")
    valid = write(tmp_path / "v.tsv", "pos\tc\nmaybe\td\n")
    args = data_options(train_fn=train, valid_fn=valid, test_fn=None, valid_ratio=0.1, seed=0,
                           text_column=None, text_pair_column=None, label_column=None)
    with pytest.raises(UserError, match=r"v\.tsv:2: label 'maybe' never occurs in the training data"):
        load_splits(args)


def label_list(examples, path):
    """sorted_labels over in-memory Examples."""
    return sorted_labels({example.label for example in examples}, len(examples), path)


def split_off_validation(examples, ratio, seed):
    """split_indices for a list of Examples: (train, valid) lists."""
    codes = np.unique([example.label for example in examples], return_inverse=True)[1]
    train, valid = split_indices(codes, ratio, seed)
    return [examples[i] for i in train], [examples[i] for i in valid]


# --- dataset, collator, sampler --------------------------------------------------------------------

def test_collator_pads_dynamically_and_truncates(tokenizer, tmp_path):
    examples = read_examples(write(tmp_path / "c.tsv", "pos\tshort\nneg\t" + "a much longer sentence " * 20 + "\n"))
    dataset = TextClassificationDataset(examples, tokenizer, max_length=16, label2id={"neg": 0, "pos": 1})
    batch = TextClassificationCollator(tokenizer)([dataset[0]])
    assert batch["input_ids"].shape == (1, 3)  # [CLS] short [SEP], no padding to max_length
    batch = TextClassificationCollator(tokenizer)([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].tolist()[0] == [1, 1, 1] + [0] * 13
    assert batch["input_ids"][0, 3:].eq(tokenizer.pad_token_id).all()
    assert batch["labels"].tolist() == [1, 0]
    assert TextClassificationCollator(tokenizer, pad_to_multiple_of=8)([dataset[0]])["input_ids"].shape == (1, 8)


def test_collator_sentence_pairs_and_texts(tokenizer, tmp_path):
    examples = read_examples(write(tmp_path / "p.tsv", "1\tthe cat sat\ta cat was sitting\n"))
    dataset = TextClassificationDataset(examples, tokenizer, max_length=64, label2id={"1": 0}, with_text=True)
    batch = TextClassificationCollator(tokenizer, with_text=True)([dataset[0]])
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens.count("[SEP]") == 2 and batch["token_type_ids"][0].max() == 1
    assert batch["texts"] == ["the cat sat\ta cat was sitting"]


def test_korean_text_survives_unchanged(tokenizer, tmp_path):
    text = "아 더빙.. 진짜 짜증나네요 목소리 ㅋㅋ"
    examples = read_examples(write(tmp_path / "k.tsv", f"0\t{text}\n1\t굳\n"))
    dataset = TextClassificationDataset(examples, tokenizer, 32, {"0": 0, "1": 1}, with_text=True)
    assert TextClassificationCollator(tokenizer, with_text=True)([dataset[0], dataset[1]])["texts"] == [text, "굳"]


@pytest.mark.parametrize("group, world_size", [(True, 1), (False, 1), (True, 2), (True, 3)])
def test_sampler_sees_every_sample_once_per_epoch(group, world_size):
    lengths = [(i * 7919) % 61 + 1 for i in range(1003)]
    samplers = [LengthGroupedBatchSampler(lengths, 16, seed=3, group_by_length=group,
                                          world_size=world_size, rank=r) for r in range(world_size)]
    for epoch in range(2):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        shards = [list(sampler) for sampler in samplers]
        assert len({len(shard) for shard in shards}) == 1  # equal step counts across processes
        assert all(len(shard) == len(sampler) for shard, sampler in zip(shards, samplers))
        seen = sorted(i for shard in shards for batch in shard for i in batch)
        assert seen == list(range(len(lengths)))


def test_sampler_groups_lengths_and_reshuffles():
    lengths = [(i * 7919) % 61 + 1 for i in range(2000)]
    grouped = LengthGroupedBatchSampler(lengths, 32, seed=0)
    plain = LengthGroupedBatchSampler(lengths, 32, seed=0, group_by_length=False)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    assert padding(list(grouped)) < padding(list(plain)) / 5
    first = list(grouped)
    grouped.set_epoch(1)
    assert list(grouped) != first
    assert torch.tensor([len(b) for b in first]).max() == 32


def test_flat_sampler_for_trainer_groups_and_aligns_batches():
    from data_load import LengthGroupedSampler
    lengths = [(i * 7919) % 61 + 1 for i in range(2003)]
    torch.manual_seed(0)
    sampler = LengthGroupedSampler(lengths, 32)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(len(lengths))) and len(sampler) == len(lengths)
    assert first != second  # a new order each epoch, from torch's generator
    torch.manual_seed(0)
    assert list(sampler) == first  # which Trainer seeds (and restores on resume)
    batches = [first[i:i + 32] for i in range(0, len(first), 32)]  # as Trainer cuts them
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    shuffled = torch.randperm(len(lengths)).tolist()
    plain = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                for b in (shuffled[i:i + 32] for i in range(0, len(shuffled), 32)))
    assert padding < plain / 5 and len(batches[-1]) == len(lengths) % 32  # the short batch comes last


@pytest.mark.parametrize("n, n_classes, ratio, seed", [(200, 2, 0.2, 1), (1003, 7, 0.1, 42), (5000, 3, 0.33, 0)])
def test_stratified_split_is_scikit_learns(n, n_classes, ratio, seed):
    """The NumPy stratified split draws exactly the split scikit-learn's train_test_split draws."""
    import numpy as np
    from sklearn.model_selection import train_test_split
    from data_load.validation import stratified_split
    codes = np.random.default_rng(seed).integers(0, n_classes, n)
    expected = train_test_split(np.arange(n), test_size=ratio, random_state=seed, stratify=codes)
    for ours, theirs in zip(stratified_split(codes, ratio, seed), expected):
        assert ours.tolist() == theirs.tolist()
