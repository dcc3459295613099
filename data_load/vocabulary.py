"""Whether the model's vocabulary covers the training texts, and extending it with the characters it
cannot represent (--extend_vocab)."""
import unicodedata

from utils.log import log

UNK_WARN_SHARE = 0.05


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
        log.warning(f"{share:.1%} of the words in the training texts are unknown to this model's vocabulary; "
                    f"use {suggestion} (--pretrained_model_name), or --extend_vocab")
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
