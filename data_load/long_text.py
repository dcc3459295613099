"""Texts longer than --max_length: one definition of how they become model inputs, shared by training,
evaluation and both classifier backends (the transformers tokenizer and the torch-free FastTokenizer feed
the same token ids in here, so both give the same windows).

  truncate   the first max_length tokens (the tokenizer truncates; as before this flag existed)
  head_tail  the first quarter and the last three quarters of the room: Sun et al. 2019 ("How to Fine-Tune
             BERT for Text Classification?") found head+tail (128 + 382 of 510 tokens) the best single
             window on IMDB, ahead of the head or the tail alone
  sliding    overlapping windows of max_length tokens, consecutive windows sharing --stride tokens (as
             `stride` with `return_overflowing_tokens` in transformers tokenizers); at inference their logits
             are pooled (--window_pooling mean|max) into one prediction per text; in training each window is
             an example carrying its text's label

A window keeps the text's special tokens ([CLS] ... [SEP], <s> ... </s>): the leading and trailing runs of
the special-tokens mask are kept whole and only the content between them is cut. Sentence pairs are always
truncated (longest first): their second segment sits between special tokens, where cutting is not defined.
Pure Python and NumPy: the ONNX classifier imports it without torch."""
import numpy as np

LONG_TEXT_CHOICES = ("truncate", "head_tail", "sliding")
POOLING_CHOICES = ("mean", "max")
# --long_text's default in training: on IMDB (1,000 reviews, MiniLM, max length 128) head_tail scored 0.791 against
# truncate's 0.767 at the same cost (256: 0.802 vs 0.790); sliding 0.834 (256: 0.849) for 3.4 (1.8) windows a review
# in training and inference (docs/accuracy.md)
DEFAULT_LONG_TEXT = "head_tail"
RECORDED_LONG_TEXT = "truncate"  # a checkpoint saved before --long_text existed was truncated
DEFAULT_POOLING = "mean"
HEAD_SHARE = 0.25  # head_tail: share of the content tokens taken from the start (Sun et al.: 128 of 510)
STRIDE_SHARE = 0.25  # sliding: default --stride, a share of --max_length (e.g. 32 tokens of overlap at 128)


def default_stride(max_length):
    return max(1, int(max_length * STRIDE_SHARE))


def special_runs(special_mask):
    """(leading, trailing) count of special tokens around the content."""
    n = len(special_mask)
    front = 0
    while front < n and special_mask[front]:
        front += 1
    back = 0
    while back < n - front and special_mask[n - 1 - back]:
        back += 1
    return front, back


def windows(ids, type_ids, special_mask, max_length, long_text, stride=None):
    """[(ids, type_ids)] of one untruncated encoded text: one window unless it is longer than max_length
    (head_tail: one cut window; sliding: overlapping windows covering every content token in order)."""
    n = len(ids)
    if n <= max_length:
        return [(list(ids), list(type_ids))]
    front, back = special_runs(special_mask)
    room = max_length - front - back
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room beside {front + back} special tokens")
    content = range(front, n - back)

    def window(positions):
        keep = [*range(front), *positions, *range(n - back, n)]
        return [ids[i] for i in keep], [type_ids[i] for i in keep]

    if long_text == "truncate":
        return [window(content[:room])]
    if long_text == "head_tail":
        head = max(1, round(room * HEAD_SHARE)) if room > 1 else room
        tail = room - head
        return [window([*content[:head], *(content[-tail:] if tail else [])])]
    stride = default_stride(max_length) if stride is None else stride
    step = room - stride
    if step < 1:
        raise ValueError(f"stride {stride} leaves no step: windows have {room} content tokens")
    out = []
    start = 0
    while True:
        out.append(window(content[start:start + room]))
        if start + room >= len(content):
            return out
        start += step


def check_stride(stride, max_length, n_special=2):
    """A --stride that leaves a window no new tokens is a flag error (message for UserError)."""
    if stride is not None and stride >= max_length - n_special:
        return (f"--stride {stride}: consecutive windows would share every token; give a stride below "
                f"--max_length {max_length} minus the {n_special} special tokens (default: "
                f"{default_stride(max_length)})")
    return None


def pool(window_logits, text_of_window, n_texts, pooling=DEFAULT_POOLING):
    """Per-text logits (n_texts, n_labels) from the logits of their windows: the mean or the elementwise max.
    `text_of_window` gives each window's text (0..n_texts-1); every text has at least one window."""
    window_logits = np.asarray(window_logits, dtype=np.float32)
    text_of_window = np.asarray(text_of_window, dtype=np.int64)
    if len(text_of_window) == n_texts:  # one window each (short texts): the logits as they are
        out = np.empty_like(window_logits)
        out[text_of_window] = window_logits
        return out
    if pooling == "max":
        out = np.full((n_texts, window_logits.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(out, text_of_window, window_logits)
        return out
    sums = np.zeros((n_texts, window_logits.shape[1]), dtype=np.float64)
    np.add.at(sums, text_of_window, window_logits)
    counts = np.bincount(text_of_window, minlength=n_texts)[:, None]
    return (sums / counts).astype(np.float32)


def cap_characters(text, max_length, long_text, chars_per_token):
    """Characters worth tokenizing: truncate needs the start only, head_tail the start and the end (a 1 MB
    line costs no more than two windows' worth), sliding the whole text."""
    cap = max_length * chars_per_token
    if long_text == "sliding" or len(text) <= cap * (2 if long_text == "head_tail" else 1):
        return text
    return text[:cap] if long_text == "truncate" else text[:cap] + " " + text[-cap:]
