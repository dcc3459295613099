"""Frozen encoder, reproducibility, Korean label names, pairs: real runs of both trainers on a tiny model."""
import json

import pytest
from conftest import ROOT, run_script
from safetensors.torch import load_file

TRAINERS = ["finetune_plm_native.py", "finetune_plm_hf.py"]


@pytest.fixture(scope="module")
def korean_train(tmp_path_factory):
    """The bundled Korean sample with Korean label names."""
    names = {"positive": "긍정", "negative": "부정"}
    lines = (ROOT / "data" / "review.sample.ko.tsv").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("ko") / "train.tsv"
    path.write_text("".join(f"{names[l.split(chr(9))[0]]}\t{l.split(chr(9), 1)[1]}\n" for l in lines), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("script", TRAINERS)
def test_frozen_encoder_keeps_encoder_weights(tmp_path, tiny_model, korean_train, script):
    model_fn = tmp_path / "frozen"
    run_script(script, "--model_fn", model_fn, "--train_fn", korean_train, "--pretrained_model_name", tiny_model,
               "--freeze_encoder", "--n_epochs", 2, "--lr", "1e-2")
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(model_fn / "model.safetensors")
    encoder = [name for name in after if name.startswith("bert.")]
    assert len(encoder) > 20
    for name in encoder:
        assert after[name].equal(before[name[len("bert."):]]), name
    # the head did learn
    assert not after["classifier.weight"].abs().sum() == 0
    history = json.loads((model_fn / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("script", TRAINERS)
def test_same_seed_same_metrics(tmp_path, tiny_model, korean_train, script):
    runs = []
    for name in ("a", "b"):
        run_script(script, "--model_fn", tmp_path / name, "--train_fn", korean_train,
                   "--pretrained_model_name", tiny_model, "--n_epochs", 1, "--valid_ratio", 0.25, "--seed", 7)
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text())["valid"])
    for key in ("loss", "accuracy", "macro_f1", "mcc"):
        assert round(runs[0][key], 4) == round(runs[1][key], 4), key
    assert runs[0]["confusion_matrix"] == runs[1]["confusion_matrix"]
    if script != "finetune_plm_native.py":
        return
    # the equality means something: another seed splits off other validation rows (in this process, through
    # the trainers' own data path; a third run cost 7 s)
    from conftest import data_options
    from data_load import load_splits
    texts = [list(load_splits(data_options(train_fn=korean_train, valid_ratio=0.25, seed=seed)).valid.texts())
             for seed in (7, 8)]
    assert len(texts[0]) == len(texts[1]) and texts[0] != texts[1]


@pytest.mark.slow
def test_korean_labels_and_vocabulary_warning(tmp_path, tiny_model, korean_train):
    model_fn = tmp_path / "ko"
    result = run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", korean_train,
                        "--pretrained_model_name", tiny_model, "--n_epochs", 1)
    assert "unknown to this model's vocabulary" in result.stderr and "beomi/kcbert-base" in result.stderr
    config = json.loads((model_fn / "config.json").read_text())
    assert set(config["label2id"]) == {"긍정", "부정"}
    assert "Glyph" not in result.stderr  # Hangul label names found a font
    out = run_script("classify_plm.py", "--model_fn", model_fn, stdin="배송이 빨랐어요\n").stdout
    assert out.split("\t")[0] in {"긍정", "부정"} and out.endswith("\t배송이 빨랐어요\n")


@pytest.mark.slow
@pytest.mark.parametrize("setting", [[], ["auto"]])  # `--extend_vocab` alone means yes
def test_extend_vocab_removes_unknown_hangul(tmp_path, tiny_model, korean_train, setting):
    model_fn = tmp_path / "ext"
    result = run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", korean_train,
                        "--pretrained_model_name", tiny_model, "--n_epochs", 1, "--extend_vocab", *setting)
    assert f"--extend_vocab {(setting or ['yes'])[0]}: " in result.stderr and "added" in result.stderr
    assert "unknown to this model's vocabulary" not in result.stderr
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_fn)
    ids = tokenizer("배송이 빨랐어요", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    out = run_script("classify_plm.py", "--model_fn", model_fn, stdin="배송이 빨랐어요\n").stdout
    assert out.endswith("\t배송이 빨랐어요\n")


def test_new_characters_start_apart_from_known_pieces(tiny_model):
    """Each added character gets its own starting embedding, near the jamo the model knows: with one
    shared starting vector (mean resizing) NSMC fine-tuning stayed at chance."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from data_load.vocabulary import extend_vocabulary
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    old = model.get_input_embeddings().weight.detach().clone()
    torch.manual_seed(0)
    added = extend_vocabulary(tokenizer, model, ["뷁 훑"])
    assert added == 2
    new = model.get_input_embeddings().weight.detach()
    a, b = (new[tokenizer.convert_tokens_to_ids(ch)] for ch in "뷁훑")
    typical = (old[1000] - old[2000]).norm()
    assert (a - b).norm() > 0.3 * typical  # distinct starting points
    jamo = old[tokenizer.convert_tokens_to_ids("ᄇ")]
    assert (a - jamo).norm() < (b - jamo).norm()  # 뷁 starts nearer its first jamo ㅂ than 훑 does


@pytest.mark.slow
@pytest.mark.parametrize("script", ["finetune_plm_hf.py"])  # the pair path is shared; the native loop has MRPC in bench
def test_sentence_pairs_end_to_end(tmp_path, tiny_model, script):
    rows = [("1", f"the {w} sat on the mat", f"a {w} was sitting on the mat") for w in ("cat", "dog", "bird")] + \
           [("0", f"the {w} sat on the mat", f"stocks fell sharply on {w} day") for w in ("cat", "dog", "bird")]
    train = tmp_path / "pairs.csv"
    train.write_text("label,sentence1,sentence2\n" + "".join(f"{l},{a},{b}\n" for l, a, b in rows * 4))
    model_fn = tmp_path / "pairs"
    run_script(script, "--model_fn", model_fn, "--train_fn", train, "--text_pair_column", "sentence2",
               "--pretrained_model_name", tiny_model, "--n_epochs", 1)
    assert json.loads((model_fn / "training_args.json").read_text())["has_pairs"] is True
    out = run_script("classify_plm.py", "--model_fn", model_fn, stdin="the cat sat\ta cat sat\n").stdout
    assert out.split("\t")[0] in {"0", "1"} and out.endswith("\tthe cat sat\ta cat sat\n")


@pytest.mark.slow
@pytest.mark.parametrize("script", TRAINERS)
def test_eval_steps_early_stopping_and_class_weights(tmp_path, tiny_model, script):
    """With a learning rate too small to change anything, the metric stalls: --early_stopping_patience 2
    stops after the third evaluation of --eval_steps 3, long before the 2 epochs are done."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    model_fn = tmp_path / "model"
    result = run_script(script, "--model_fn", model_fn, "--train_fn", ROOT / "data" / "review.sample.en.tsv",
                        "--pretrained_model_name", tiny_model, "--n_epochs", 2, "--lr", "1e-12", "--eval_steps", 3,
                        "--early_stopping_patience", 2, "--class_weight", "negative=1,positive=2")
    assert "class weights (negative=1,positive=2) = negative 1, positive 2" in result.stderr
    assert "evaluation = every 3 steps" in result.stderr
    history = json.loads((model_fn / "history.json").read_text())
    assert [row["step"] for row in history] == [3, 6, 9]
    assert "early stopping: macro_f1 has not improved for 2 evaluations (best" in result.stderr
    record = json.loads((model_fn / "training_args.json").read_text())
    assert record["optimizer_steps"] == 9  # of 28
    events = EventAccumulator(str(model_fn / "runs" / ("native" if "native" in script else "hf")))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/valid_macro_f1")] == [3, 6, 9]
