"""The model shapes users bring, built offline from configs at tiny sizes: a KcBERT-shaped BERT with a
Korean WordPiece vocabulary trained here on NSMC, a RoBERTa (byte-level BPE, no token_type_ids,
positions offset by the padding index), a DistilBERT (no token_type_ids) and an ELECTRA (embedding
size differs from hidden size). Each fine-tunes (two with each trainer) and classifies."""
import json

import pytest
from conftest import ROOT, run_script, shared

pytestmark = pytest.mark.slow

TINY = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def korean_texts(n):
    lines = shared("nsmc", "ratings_train.txt").read_text(encoding="utf-8").splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    return [(label, text) for _, text, label in rows if text.strip()][:n]


def english_texts():
    return [line.split("\t")[1] for line in (ROOT / "data" / "review.sample.en.tsv").read_text().splitlines()]


def default_vocab():
    from utils.hub import default_model_path
    return f"{default_model_path()}/vocab.txt"


def build_kcbert(directory):
    """BERT with a cased WordPiece vocabulary trained on NSMC and 300 positions, as beomi/kcbert-base."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer
    # no lower-casing or accent stripping: both decompose Hangul syllables into jamo (KcBERT keeps case)
    wordpiece = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    wordpiece.train_from_iterator([text for _, text in korean_texts(20_000)], vocab_size=8000, min_frequency=2,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False)
    tokenizer = BertTokenizer(tokenizer_object=wordpiece._tokenizer, do_lower_case=False, model_max_length=300)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, max_position_embeddings=300, **TINY)
    return tokenizer, BertForMaskedLM(config)


def build_roberta(directory):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(english_texts(), vocab_size=600, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    # 130 positions: 128 tokens plus the two a RoBERTa reserves below its padding offset
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=64, max_position_embeddings=130, type_vocab_size=1,
                           pad_token_id=tokenizer.pad_token_id, **TINY)
    return tokenizer, RobertaForMaskedLM(config)


def build_distilbert(directory):
    from transformers import DistilBertConfig, DistilBertForMaskedLM, DistilBertTokenizer
    tokenizer = DistilBertTokenizer(default_vocab())
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                              max_position_embeddings=128)
    return tokenizer, DistilBertForMaskedLM(config)


def build_electra(directory):
    from transformers import ElectraConfig, ElectraForPreTraining, ElectraTokenizer
    tokenizer = ElectraTokenizer(default_vocab())
    config = ElectraConfig(vocab_size=tokenizer.vocab_size, embedding_size=32, hidden_size=64,
                           max_position_embeddings=128, **TINY)
    return tokenizer, ElectraForPreTraining(config)


# shape: (builder, model_type, longest input the model takes)
SHAPES = {"kcbert": (build_kcbert, "bert", 300), "roberta": (build_roberta, "roberta", 128),
          "distilbert": (build_distilbert, "distilbert", 128), "electra": (build_electra, "electra", 128)}


# Each shape with one trainer, each trainer with two shapes: a shape is about loading, tokenizing and
# saving, which both trainers share (prepare.py, finish.py); running both on all four cost a minute.
TRAINER_OF = {"kcbert": "finetune_plm_native.py", "roberta": "finetune_plm_hf.py",
              "distilbert": "finetune_plm_native.py", "electra": "finetune_plm_hf.py"}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shape_fine_tunes_and_classifies(tmp_path, shape):
    import torch
    build, model_type, limit = SHAPES[shape]
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    torch.manual_seed(0)
    tokenizer, model = build(pretrained)
    model.save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)

    if shape == "kcbert":
        # NSMC reviews that say 최고 (best, positive) or 최악 (worst, negative): a randomly initialised tiny
        # model learns these in 2 epochs on any CPU; on 600 arbitrary reviews it stayed at chance on the CI
        # machine (train loss 0.6939 -> 0.6953) while passing here
        positive = [(label, text) for label, text in korean_texts(30_000) if label == "1" and "최고" in text
                    and "최악" not in text][:300]
        negative = [(label, text) for label, text in korean_texts(30_000) if label == "0" and "최악" in text
                    and "최고" not in text][:300]
        rows = [row for pair in zip(positive, negative) for row in pair]
        train_fn = tmp_path / "train.tsv"
        train_fn.write_text("".join(f"{'positive' if label == '1' else 'negative'}\t{text}\n" for label, text in rows),
                            encoding="utf-8")
        sentences = ["배송이 빨랐어요 정말 재밌어요", "최악의 영화 시간 아까움", "그냥 그래요"]
    else:
        train_fn = ROOT / "data" / "review.sample.en.tsv"
        sentences = ["Works perfectly, highly recommended.", "Broke after a day. Returning it.", "It is a kettle."]

    for script in (TRAINER_OF[shape],):
        model_fn = tmp_path / script
        result = run_script(script, "--model_fn", model_fn, "--train_fn", train_fn, "--pretrained_model_name",
                            pretrained, "--n_epochs", 2, "--max_length", 512, "--batch_size", 16,
                            # randomly initialised tiny models: at the default 2e-4 the RoBERTa one stayed at
                            # chance for 2 epochs (loss 0.6936 -> 0.6937); at 1e-3 it learns the task
                            "--lr", "1e-3")
        assert "unknown to this model's vocabulary" not in result.stderr  # the Korean vocabulary covers NSMC
        assert f"--max_length 512 is more than the model allows; using {limit}" in result.stderr
        record = json.loads((model_fn / "training_args.json").read_text())
        assert record["max_length"] == limit
        config = json.loads((model_fn / "config.json").read_text())
        assert config["model_type"] == model_type
        assert sorted(config["id2label"].values()) == ["negative", "positive"]
        history = json.loads((model_fn / "history.json").read_text())
        assert history[-1]["train_loss"] < history[0]["train_loss"], history

        out = run_script("classify_plm.py", "--model_fn", model_fn, "--with_prob",
                         stdin="".join(f"{s}\n" for s in sentences)).stdout.splitlines()
        assert [line.split("\t")[2] for line in out] == sentences
        assert {line.split("\t")[0] for line in out} <= {"negative", "positive"}
        assert all(0.5 <= float(line.split("\t")[1]) <= 1 for line in out)

    if shape == "kcbert":  # Korean is represented, not [UNK]: the checkpoint's own tokenizer says so
        from transformers import AutoTokenizer
        saved = AutoTokenizer.from_pretrained(tmp_path / TRAINER_OF[shape])
        assert saved.unk_token_id not in saved(sentences[0])["input_ids"]
