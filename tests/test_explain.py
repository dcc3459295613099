"""--explain (inference/explain.py): word attributions in classify_plm.py, the server and evaluate_plm.py.

Tiny BERT checkpoints written in the trainers' layout (test_onnx.tiny_checkpoint): whether attributions are
complete, reassemble the text, agree across backends and keep their JSON shapes does not depend on how well a
model was trained (how faithful they are on a fine-tuned one is bench/explain.py's question)."""
import io
import json
import re
import sys

import numpy as np
import pytest
from conftest import classifier_in_process, run_script
from test_onnx import REVIEWS, tiny_checkpoint, write_checkpoint

from inference.explain import DEFAULT_STEPS, Explainer, word_spans
from utils.errors import UserError

pytest.importorskip("captum", reason="integrated gradients: pip install -r requirements/explain.txt")

TEXTS = ["I don't like it!!! 北京 is ok.", "Terrible.  Broke after a day", REVIEWS[0], "ok"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Single-label, pair, multi-label (label 1 always passes its threshold of 0.0, label 0 never its 1.0) and
    regression tiny BERTs."""
    root = tmp_path_factory.mktemp("explain")
    out = {"single": tiny_checkpoint(root / "single", "bert"),
           "pair": tiny_checkpoint(root / "pair", "bert", pairs=True)}
    multi = tiny_checkpoint(root / "multi", "bert")
    edit_json(multi / "config.json", problem_type="multi_label_classification")
    edit_json(multi / "training_args.json", threshold=[1.0, 0.0])
    out["multi"] = multi
    out["regression"] = regression_checkpoint(root / "regression")
    return out


def edit_json(path, **values):
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def regression_checkpoint(directory):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from utils.hub import default_model_path
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=128, num_labels=1, problem_type="regression"))
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    return write_checkpoint(directory, model, tokenizer, ["score"])


@pytest.fixture(scope="module")
def single(models):
    return classifier_in_process(models["single"])


def explained(classifier, items, method, top_k=None):
    ids = classifier.predict(items, top_k).label_ids
    return ids, Explainer(classifier, method).explain(items, ids)


def test_words_reassemble_the_text():
    cases = {"I don't like it!!!": ["I", "don't", "like", "it", "!", "!", "!"],
             "  l'eau,\tthe 2nd-best 北京 café ": ["l'eau", ",", "the", "2nd", "-", "best", "北", "京", "café"],
             "맛있어요 ㅎㅎ 😀ok 'quoted'": ["맛있어요", "ㅎㅎ", "😀", "ok", "'", "quoted", "'"],
             "नमस्ते दुनिया": ["नमस्ते", "दुनिया"], "   ": []}
    for text, words in cases.items():
        spans = word_spans(text)
        assert [text[s:e] for s, e in spans] == words
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # in text order, not overlapping
        gaps = [text[e:s] for (_, e), (s, _) in zip([(0, 0), *spans], [*spans, (len(text), 0)])]
        assert all(not gap.strip() for gap in gaps)  # only whitespace between the words: they are the text


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_every_word_in_order_for_the_printed_label(single, method):
    items = [(text, None) for text in TEXTS]
    ids, out = explained(single, items, method)
    for (text, _), (words, rows), chosen in zip(items, out, ids):
        assert words == [text[s:e] for s, e in word_spans(text)] and len(rows) == len(chosen) == 1
        assert len(rows[0]) == len(words) and np.isfinite(rows[0]).all() and np.abs(rows[0]).sum() > 0


def test_integrated_gradients_are_complete(single):
    """The attributions of a text sum to its label's logit minus the all-padding baseline's, within 5% (captum's
    convergence delta checked against logits computed here), and the words hold all of it. A tiny random model is
    nearly linear along the path, so this holds at any steps; how complete a fine-tuned model's are at each
    --explain_steps is bench/explain.py's measure."""
    import torch
    items = [(text, None) for text in TEXTS]
    ids = single.predict(items).label_ids
    explainer = Explainer(single, "integrated_gradients")
    encoded = [explainer.encoder.encode(text, pair) for text, pair in items]
    labels = [row[0] for row in ids]
    tokens, deltas = explainer.token_attributions([e.inputs[0] for e in encoded], labels, with_delta=True)
    words = explainer.explain(items, ids)
    pad = explainer.encoder.fast.pad_id
    for e, label, values, delta, (_, rows) in zip(encoded, labels, tokens, deltas, words):
        ids_, _, word_of = e.inputs[0]
        baseline = [t if j < 0 else pad for t, j in zip(ids_, word_of)]
        with torch.no_grad():
            logits = single.model(input_ids=torch.tensor([ids_, baseline])).logits[:, label]
        difference = float(logits[0] - logits[1])
        assert abs(values.sum() - difference) <= 0.05 * abs(difference)
        assert abs(delta) <= 0.05 * abs(difference)
        assert rows[0].sum() == pytest.approx(values.sum(), abs=1e-6)  # every word piece lands in a word


def test_occlusion_is_the_drop_when_the_word_is_removed(single):
    """Each word's attribution is the printed label's probability minus its probability with that word cut out of
    the text, as classify_plm.py computes it."""
    text = "Terrible service, but the food was great."
    ids, [(words, rows)] = explained(single, [(text, None)], "occlusion")
    label = ids[0][0]
    probabilities = single.predict([(text, None)]).probabilities
    spans = word_spans(text)
    without = single.predict([(text[:s] + text[e:], None) for s, e in spans]).probabilities
    assert rows[0] == pytest.approx(probabilities[0, label] - without[:, label], abs=2e-6)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_pairs_multi_label_and_regression_explain(models, method):
    pair = classifier_in_process(models["pair"])
    _, [(words, rows)] = explained(pair, [("The lamp broke.", "It works fine")], method)
    assert words == ["The", "lamp", "broke", ".", "It", "works", "fine"]  # both texts, the text's words first
    assert np.abs(rows[0][:4]).sum() > 0 and np.abs(rows[0][4:]).sum() > 0

    multi = classifier_in_process(models["multi"])
    ids, out = explained(multi, [(text, None) for text in TEXTS], method, top_k=None)
    assert all(chosen == [1] for chosen in ids)  # per-label thresholds: label 1 only
    ids, out = explained(multi, [(TEXTS[0], None)], method)
    both = Explainer(multi, method).explain([(TEXTS[0], None)], [[1, 0]])[0][1]  # two labels: a row each
    assert len(both) == 2 and not np.allclose(both[0], both[1])
    assert both[0] == pytest.approx(out[0][1][0], abs=1e-6)

    regression = classifier_in_process(models["regression"])
    ids, [(words, rows)] = explained(regression, [(REVIEWS[1], None)], method)
    assert ids == [[0]] and len(rows) == 1 and np.abs(rows[0]).sum() > 0
    if method == "occlusion":  # the drop of the number itself
        number = regression.predict([(REVIEWS[1], None)]).logits[0, 0]
        s, e = word_spans(REVIEWS[1])[0]
        cut = regression.predict([(REVIEWS[1][:s] + REVIEWS[1][e:], None)]).logits[0, 0]
        assert rows[0][0] == pytest.approx(number - cut, abs=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "max"])
@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_sliding_windows_explain_every_window(models, method, pooling):
    """A text in several 16-token windows: every word of it, those of the last window too, gets an attribution,
    and the printed label stays what classify_plm.py prints."""
    sliding = classifier_in_process(models["single"], "--max_length", 16, "--long_text", "sliding", "--stride", 4,
                                    "--window_pooling", pooling)
    text = " ".join(REVIEWS[:4])
    assert len(Explainer(sliding, method).encoder.encode(text).inputs) >= 4
    ids, [(words, rows)] = explained(sliding, [(text, None)], method)
    assert words == [text[s:e] for s, e in word_spans(text)]
    assert np.isfinite(rows[0]).all() and np.abs(rows[0]).sum() > 0
    last = [j for j, (s, _) in enumerate(word_spans(text)) if s >= len(" ".join(REVIEWS[:3]))]
    if pooling == "mean":  # every window counts
        assert np.abs(rows[0][last]).sum() > 0
    elif method == "integrated_gradients":  # the window the max took alone: the words outside it get nothing
        assert (rows[0] == 0).any()


def classify_in_process(monkeypatch, capsys, model_fn, lines, *flags):
    """classify_plm.py's main on stdin lines, in this process: (stdout lines, stderr)."""
    import classify_plm
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["classify_plm.py", "--model_fn", str(model_fn), *map(str, flags)])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n".join(lines) + "\n").encode())))
    classify_plm.main()
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err


def test_classify_prints_json_and_the_same_labels_and_scores(models, monkeypatch, capsys):
    lines = [TEXTS[0], "", "   ", *REVIEWS[:5]]  # blank lines are skipped, as without --explain
    plain, _ = classify_in_process(monkeypatch, capsys, models["single"], lines, "--with_prob")
    for flags in ([], ["--explain_method", "occlusion"]):
        out, err = classify_in_process(monkeypatch, capsys, models["single"], lines, "--explain", *flags)
        assert "classified and explained 6 sentences" in err
        answers = [json.loads(line) for line in out]
        assert len(answers) == len(plain) == 6
        for answer, line in zip(answers, plain):
            label, probability, text = line.split("\t")
            assert list(answer) == ["label", "score", "text", "words"]
            assert answer["label"] == label and f"{answer['score']:.4f}" == probability and answer["text"] == text
            assert [w for w, _ in answer["words"]] == [text[s:e] for s, e in word_spans(text)]
            assert all(isinstance(a, float) for _, a in answer["words"])

    out, _ = classify_in_process(monkeypatch, capsys, models["single"], REVIEWS[:1], "--explain", "--top_k", 1)
    assert isinstance(json.loads(out[0])["label"], str)  # one label a line: no lists, as in file mode
    out, _ = classify_in_process(monkeypatch, capsys, models["single"], REVIEWS[:2], "--explain", "--top_k", 2,
                                 "--with_prob")
    answer = json.loads(out[0])
    assert answer["label"] == ["positive", "negative"] or answer["label"] == ["negative", "positive"]
    assert len(answer["score"]) == len(answer["words"]) == 2
    assert set(answer["probabilities"]) == {"negative", "positive"}

    out, _ = classify_in_process(monkeypatch, capsys, models["pair"], ["The lamp broke.\tIt works"], "--explain")
    answer = json.loads(out[0])
    assert answer["text"] == "The lamp broke." and answer["text_pair"] == "It works"
    assert [w for w, _ in answer["words"]] == ["The", "lamp", "broke", ".", "It", "works"]

    out, _ = classify_in_process(monkeypatch, capsys, models["regression"], ["fine"], "--explain")
    answer = json.loads(out[0])
    plain, _ = classify_in_process(monkeypatch, capsys, models["regression"], ["fine"])
    assert f"{answer['score']:.4f}" == plain[0].split("\t")[0] and answer["words"][0][0] == "fine"


@pytest.mark.parametrize("flags,words", [
    (["--explain_steps", "0", "--explain"], "argument --explain_steps: 0 is out of range"),
    (["--explain_steps", "5"], "--explain_steps: only with --explain"),
    (["--explain", "--explain_method", "occlusion", "--explain_steps", "5"], "integrated_gradients takes steps"),
    (["--explain", "--explain_method", "integrated_gradients", "--quantize", "int8"], "--quantize int8"),
    (["--explain", "--explain_method", "integrated_gradients", "--backend", "onnx"], "--backend onnx runs a graph"),
])
def test_bad_explain_flags_are_one_line(models, monkeypatch, capsys, flags, words):
    try:
        classify_in_process(monkeypatch, capsys, models["single"], ["text"], *flags)
    except UserError as error:
        message = f"error: {error}"
    except SystemExit as error:  # argparse's own refusals: already printed as one line
        assert error.code == 2
        message = capsys.readouterr().err.strip()
    else:
        raise AssertionError("not refused")
    assert words in message and "\n" not in message


def test_the_server_adds_words_to_each_predicted_label(models):
    from test_serve import client_for
    with client_for(models["multi"]) as client:
        info = client.get("/info").json()["explain"]
        assert info == {"method": "integrated_gradients", "methods": ["integrated_gradients", "occlusion"],
                        "steps": DEFAULT_STEPS}
        plain = client.post("/predict", json={"inputs": TEXTS[:2]}).json()
        for method in (True, "occlusion"):
            answers = client.post("/predict", json={"inputs": TEXTS[:2], "explain": method}).json()
            for text, answer, before in zip(TEXTS, answers, plain):
                assert [{k: v for k, v in p.items() if k != "words"} for p in answer] == before  # nothing else changes
                for p in answer:
                    assert ("words" in p) == p["predicted"]
                    if p["predicted"]:
                        assert [w for w, _ in p["words"]] == [text[s:e] for s, e in word_spans(text)]
        refused = client.post("/predict", json={"inputs": "hi", "explain": "shap"})
        assert refused.status_code == 422 and "explain must be" in refused.json()["error"]
    with client_for(models["pair"]) as client:
        [answer] = client.post("/predict", json={"inputs": [["The lamp broke.", "It works"]], "explain": True}).json()
        assert [w for w, _ in answer[0]["words"]] == ["The", "lamp", "broke", ".", "It", "works"]


def test_evaluate_writes_strongest_and_top_words(models, monkeypatch, capsys, tmp_path):
    import evaluate_plm
    test_fn = tmp_path / "test.tsv"
    lines = (REVIEWS * 2)[:60]
    test_fn.write_text("".join(f"{'negative' if i % 2 else 'positive'}\t{text}\n" for i, text in enumerate(lines)))
    out = tmp_path / "evaluation"
    monkeypatch.setattr(sys, "argv", ["evaluate_plm.py", "--model_fn", str(models["single"]), "--test_fn", str(test_fn),
                                      "--output_fn", str(out), "--explain", "--explain_method", "occlusion",
                                      "--n_errors", "60"])
    evaluate_plm.main()
    errors = [line.split("\t") for line in (out / "errors.tsv").read_text().splitlines()]
    assert errors[0] == ["loss", "gold", "predicted", "p_gold", "text", "words"]
    for row in errors[1:]:
        wrong = row[1] != row[2]
        listed = re.findall(r"(\S+) \((-?[\d.e-]+)\)", row[5])
        assert (len(listed) == min(5, len(word_spans(row[4])))) if wrong else row[5] == ""
        values = [float(v) for _, v in listed]
        assert values == sorted(values, reverse=True)  # strongest first
    top = [line.split("\t") for line in (out / "top_words.tsv").read_text().splitlines()]
    assert top[0] == ["label", "rank", "word", "mean_attribution", "count"]
    assert all(int(row[4]) >= 3 for row in top[1:]) and {row[0] for row in top[1:]} <= {"negative", "positive"}
    assert (out / "top_words.png").stat().st_size > 0


@pytest.mark.slow  # runs the real scripts: the export, and file mode on the torch-free backend
def test_onnx_occlusion_agrees_with_torch_and_file_mode_adds_words(models, single, tmp_path):
    run_script("export_plm.py", "--model_fn", models["single"])
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS + REVIEWS[:20]) + "\n")
    run_script("classify_plm.py", "--model_fn", models["single"], "--backend", "onnx", "--explain",
               "--input_fn", source, "--output_fn", tmp_path / "out", "--output_format", "jsonl", "--num_workers", 1)
    rows = [json.loads(line) for line in (tmp_path / "out" / "part-00000.jsonl").read_text().splitlines()]
    items = [(text, None) for text in TEXTS + REVIEWS[:20]]
    _, torch_words = explained(single, items, "occlusion")
    assert len(rows) == len(items)
    for row, (words, values) in zip(rows, torch_words):
        assert [w for w, _ in row["words"]] == words
        assert [a for _, a in row["words"]] == pytest.approx(values[0], abs=2e-5)
