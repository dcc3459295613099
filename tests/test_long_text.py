"""Texts longer than --max_length (data_load/long_text.py): sliding windows and head+tail, the same in training
(data_load.encoding with transformers' tokenizer), in the torch classifier and in the torch-free one
(FastTokenizer), pooled into one prediction per text, in order."""
import dataclasses

import numpy as np
import pytest
from conftest import classifier_options
from test_onnx import REVIEWS, tiny_checkpoint

LONG_REVIEW = " ".join(REVIEWS[:30])  # ~340 WordPiece tokens: several windows at max_length 64


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    from utils.hub import default_model_path
    return AutoTokenizer.from_pretrained(default_model_path())


def content(tokenizer, text):
    """The text's token ids without special tokens, untruncated."""
    return tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]


def test_sliding_windows_reassemble_the_text(tokenizer):
    from data_load.encoding import encode_texts
    max_length, stride = 64, 16
    whole = content(tokenizer, LONG_REVIEW)
    assert len(whole) > 4 * max_length
    windows = encode_texts(tokenizer, [LONG_REVIEW, "short one"], None, max_length, "sliding", stride)["input_ids"]
    long_windows, short_windows = windows
    assert len(short_windows) == 1 and short_windows[0] == tokenizer("short one")["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    pieces = []
    for k, window in enumerate(long_windows):
        assert len(window) <= max_length and window[0] == cls and window[-1] == sep
        body = window[1:-1]
        if k:  # consecutive windows share `stride` tokens
            assert body[:stride] == pieces[-stride:]
            body = body[stride:]
        pieces += body
    assert pieces == whole  # every token, once, in order
    room = max_length - 2
    assert len(long_windows) == 1 + -(-(len(whole) - room) // (room - stride))


def test_head_tail_keeps_both_ends(tokenizer):
    from data_load.encoding import encode_texts
    from data_load.long_text import HEAD_SHARE
    max_length = 64
    whole = content(tokenizer, LONG_REVIEW)
    ids = encode_texts(tokenizer, [LONG_REVIEW], None, max_length, "head_tail")["input_ids"][0]
    room = max_length - 2
    head = round(room * HEAD_SHARE)
    assert len(ids) == max_length
    assert ids[1:1 + head] == whole[:head] and ids[1 + head:-1] == whole[-(room - head):]
    truncated = encode_texts(tokenizer, [LONG_REVIEW], None, max_length)["input_ids"][0]
    assert truncated[1:-1] == whole[:room] and ids[-2] != truncated[-2]
    # a 1 MB text costs no more than its two ends: the same cut as the whole text
    huge = LONG_REVIEW + " filler" * 200_000 + " " + LONG_REVIEW
    cut = encode_texts(tokenizer, [huge], None, max_length, "head_tail")["input_ids"][0]
    assert cut[1:1 + head] == whole[:head] and cut[1 + head:-1] == whole[-(room - head):]


def test_fast_tokenizer_makes_the_same_windows(tmp_path, tokenizer):
    """The torch-free classifier's tokenizer windows a text as training does."""
    from data_load.encoding import encode_texts
    from data_load.tokens import FastTokenizer
    tokenizer.save_pretrained(tmp_path)
    fast = FastTokenizer(tmp_path, 64)
    texts = [LONG_REVIEW, "short one", REVIEWS[0] * 4]
    for long_text in ("head_tail", "sliding"):
        expected = encode_texts(tokenizer, texts, None, 64, long_text, 16)
        ids, type_ids, text_of_input = fast.encode_inputs([(t, None) for t in texts], long_text, 16)
        if long_text == "sliding":
            assert ids == [w for text in expected["input_ids"] for w in text]
            assert text_of_input == [i for i, text in enumerate(expected["input_ids"]) for _ in text]
        else:
            assert ids == expected["input_ids"] and text_of_input is None


def test_pool_mean_and_max():
    from data_load.long_text import pool
    logits = np.array([[1, 0], [3, 2], [5, -4], [0, 1]], dtype=np.float32)
    text_of_window = [0, 0, 1, 0]
    np.testing.assert_allclose(pool(logits, text_of_window, 2, "mean"), [[4 / 3, 1], [5, -4]])
    np.testing.assert_allclose(pool(logits, text_of_window, 2, "max"), [[3, 2], [5, -4]])


def classifier_args(model_fn, **flags):
    """The classifier options classify_plm.py builds (8 texts a pass, on the CPU in fp32), with `flags` over them."""
    options = classifier_options(model_fn, "--batch_size", 8, "--device", "cpu", "--precision", "fp32")
    return dataclasses.replace(options, **flags)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("long_text") / "bert", "bert")


def test_pooled_prediction_of_a_short_text_is_its_single_window(checkpoint):
    from inference.torch_classifier import TorchClassifier
    items = [(text, None) for text in REVIEWS[:6]]
    truncated = TorchClassifier(classifier_args(checkpoint, long_text="truncate")).logits(items)
    for pooling in ("mean", "max"):
        sliding = TorchClassifier(classifier_args(checkpoint, long_text="sliding", window_pooling=pooling))
        np.testing.assert_array_equal(sliding.logits(items), truncated)
    # a long text's windows are pooled into one row, in input order, between short ones
    mixed = [items[0], (LONG_REVIEW, None), items[1]]
    logits = sliding.logits(mixed)
    assert logits.shape == (3, 2)
    np.testing.assert_allclose(logits[[0, 2]], truncated[[0, 1]], atol=1e-6)
    assert not np.allclose(logits[1], TorchClassifier(classifier_args(checkpoint)).logits([mixed[1]])[0])


def test_classify_keeps_order_and_a_flat_memory(checkpoint, monkeypatch, capsys):
    """classify_plm.py with sliding windows: one line out per line in, in order, the same whatever the chunk;
    the classifier never holds more than --chunk_size lines (and their windows) at a time."""
    import io
    import sys

    import classify_plm
    from inference.classifier import Classifier
    lines = [LONG_REVIEW if i % 3 == 0 else REVIEWS[i % len(REVIEWS)] for i in range(20)]
    seen = []
    predict = Classifier.predict

    def recording(self, items, *args, **kwargs):
        seen.append(len(items))
        return predict(self, items, *args, **kwargs)
    monkeypatch.setattr(Classifier, "predict", recording)

    def run(chunk_size):
        monkeypatch.setattr(sys, "argv", ["classify_plm.py", "--model_fn", str(checkpoint), "--long_text", "sliding",
                                          "--with_prob", "--chunk_size", str(chunk_size), "--batch_size", "4"])
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n".join(lines) + "\n").encode())))
        classify_plm.main()
        return capsys.readouterr().out.splitlines()
    small, large = run(4), run(100)
    assert seen[:5] == [4] * 5 and seen[5:] == [20]
    assert [line.split("\t", 2)[2] for line in small] == lines
    labels = lambda out: [line.split("\t")[0] for line in out]  # noqa: E731
    assert labels(small) == labels(large)
    np.testing.assert_allclose([float(line.split("\t")[1]) for line in small],
                               [float(line.split("\t")[1]) for line in large], atol=1e-5)


def test_onnx_backend_pools_windows_as_torch(checkpoint):
    from inference.onnx_classifier import OnnxClassifier
    from inference.onnx_export import export
    from inference.torch_classifier import TorchClassifier
    export(checkpoint, log=lambda line: None)
    items = [(LONG_REVIEW, None), (REVIEWS[0], None), (LONG_REVIEW[::-1], None), (REVIEWS[3], None)]
    for flags in ({"long_text": "sliding", "window_pooling": "max"}, {"long_text": "head_tail"}):
        expected = TorchClassifier(classifier_args(checkpoint, **flags)).logits(items)
        onnx = OnnxClassifier(classifier_args(checkpoint, backend="onnx", **flags))
        np.testing.assert_allclose(onnx.logits(items), expected, atol=1e-4)


def test_bad_stride_is_a_flag_error(capsys):
    from options.training_flags import training_parser
    with pytest.raises(SystemExit) as stopped:
        training_parser("test").parse_args(["--model_fn", "m", "--train_fn", "x.tsv", "--long_text", "sliding",
                                            "--max_length", "32", "--stride", "30"])
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and error.startswith("error: --stride 30") and "\n" not in error


def test_help_describes_the_long_text_flags():
    import argparse

    from inference.classifier import add_classifier_flags
    from options.training_flags import training_parser
    parser = argparse.ArgumentParser()
    add_classifier_flags(parser)
    for text in (" ".join(training_parser("test").format_help().split()), " ".join(parser.format_help().split())):
        assert "--long_text" in text and "--window_pooling" in text and "25% of --max_length" in text
