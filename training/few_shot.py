"""--few_shot: the recipe for a small training set: a pair phase for the encoder (pair_phase, SetFit's contrastive
phase), then the classifier with the schedule below. The defaults (3 epochs of batches of 32) were tuned on
thousands of rows; on emotion with 16 examples a class (96 rows) they make 9 optimizer steps and score below
always predicting the majority class (issue 30: 0.257 and 0.230 on two draws, majority 0.348). The recipe
gives such a set enough small steps instead: batches of FEW_SHOT_BATCH, as many epochs as reach
FEW_SHOT_STEPS optimizer steps (at most FEW_SHOT_MAX_EPOCHS); the learning rate and warm-up share stay. Its figures against the
defaults and SetFit: docs/accuracy.md ("Few labels"), bench/few_shot.py.

Only the schedule flags left at their defaults change (a flag given on the command line is kept), so a
model trained with the recipe is saved, loaded, exported and served like any other; training_args.json
records the values used."""
import dataclasses
import math
import random

# auto: the recipe when the training set has at most this many examples per class on average (SetFit's
# range, 8 to 64 a class); the bundled sample (216 a class) and the benches' 4,000-row emotion keep the defaults
FEW_SHOT_PER_CLASS = 64
FEW_SHOT_BATCH = 8
FEW_SHOT_STEPS = 200  # issue 30: 20 epochs of 8 on 96 rows (220 steps) scored 0.337 / 0.447 against 0.257 / 0.230
FEW_SHOT_MAX_EPOCHS = 50
# Choosing the best epoch needs a validation set that can tell epochs apart. On emotion with 8 examples a class,
# the 10% split off for validation is 5 texts (one right answer is 0.2 of accuracy): draw 1 kept its first
# epoch (2 of 5 right, the classifier barely trained) and scored 0.206 on 1,000 validation rows, its last epoch
# 0.328; SST-2 (2 validation texts) 0.499 and 0.583 (docs/accuracy.md, "Few labels"). Below this many
# validation texts the recipe keeps the last epoch's weights.
FEW_SHOT_MIN_VALID_TO_CHOOSE = 50
RECIPE_FLAGS = ("n_epochs", "batch_size")


def is_few_shot(mode, n_train, n_classes, single_label=True):
    """Whether the recipe applies: --few_shot on, or auto and a small single-label training set (the recipe was
    measured on single-label corpora only; multi-label and regression runs keep their flags unless --few_shot on)."""
    return mode == "on" or (mode == "auto" and single_label and n_train <= FEW_SHOT_PER_CLASS * n_classes)


def keeps_last_weights(few_shot, n_valid):
    """Whether a run keeps its last epoch's weights instead of the best's: the recipe applies (few_shot: its
    flags, None when it does not) and validation is too small to choose an epoch by."""
    return few_shot is not None and n_valid < FEW_SHOT_MIN_VALID_TO_CHOOSE


def few_shot_schedule(schedule, n_train, defaults):
    """ScheduleOptions with the recipe in the flags still at their parser defaults (`defaults`: {flag:
    default}); --max_steps, when given, keeps deciding the length."""
    changes = {}
    if schedule.batch_size == defaults["batch_size"]:
        changes["batch_size"] = FEW_SHOT_BATCH
    if schedule.n_epochs == defaults["n_epochs"] and not schedule.max_steps:
        batch = changes.get("batch_size", schedule.batch_size) * schedule.gradient_accumulation_steps
        steps_per_epoch = max(1, math.ceil(n_train / batch))
        changes["n_epochs"] = min(FEW_SHOT_MAX_EPOCHS, max(defaults["n_epochs"], math.ceil(FEW_SHOT_STEPS / steps_per_epoch)))
    return dataclasses.replace(schedule, **changes), changes


# The recipe's first phase, SetFit's (Tunstall et al. 2022): before the classifier is trained, the encoder is
# fine-tuned on pairs of training texts to give texts of one class close mean-pooled embeddings (cosine 1) and
# texts of two classes distant ones (cosine 0). Emotion, 8 a class, draw 0, 1,000 validation rows: the
# encoder's mean-pooled embeddings untrained under a logistic regression 0.373, after this phase 0.395 (SetFit's
# own two stages), and this phase then the classifier fine-tuned on the first token as every checkpoint here is
# 0.378, against the recipe's schedule alone 0.334; in the trainer, over 2 draws, 0.359 against 0.310, SetFit
# 0.352 (docs/accuracy.md, "Few labels"). Pooled on the first token
# instead of the mean, the same phase scored 0.281: the offline MiniLM was trained as a mean-pooled sentence
# encoder.
PAIR_ITERATIONS = 20  # pairs of each kind (same class, other class) per example: SetFit's num_iterations
PAIR_BATCH = 16  # SetFit's batch size
PAIR_LR = 2e-5  # SetFit's body learning rate


def sentence_pairs(label_ids, iterations, seed):
    """(i, j, target cosine) index pairs as SetFit samples them: each iteration, each example with a random
    example of its class (1.0) and one of a random other class (0.0); shuffled."""
    rng = random.Random(seed)
    members = {}
    for i, label in enumerate(label_ids):
        members.setdefault(label, []).append(i)
    classes = sorted(members)
    pairs = []
    for _ in range(iterations):
        for i, label in enumerate(label_ids):
            pairs.append((i, rng.choice(members[label]), 1.0))
            if len(classes) > 1:
                other = rng.choice([c for c in classes if c != label])
                pairs.append((i, rng.choice(members[other]), 0.0))
    rng.shuffle(pairs)
    return pairs


def mean_pooled(encoder, batch):
    """The encoder's last hidden states averaged over each text's real tokens (sentence-transformers' pooling)."""
    hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def pair_phase(model, train_set, collate, device, seed, iterations=PAIR_ITERATIONS, show_progress=True):
    """The encoder (model.base_model) trained one epoch on sentence_pairs of the training set with SetFit's loss
    (the squared difference between the pair's cosine similarity and its target); the head is left as it is.
    Returns the number of pairs."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup
    columns = [name for name in ("input_ids", "token_type_ids") if name in train_set.column_names]
    items = [dict(zip(columns, values)) for values in zip(*(train_set[name] for name in columns))]
    pairs = sentence_pairs([int(label) for label in train_set["labels"]], iterations, seed)
    if not pairs:
        return 0
    encoder = model.base_model
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=PAIR_LR)
    steps = math.ceil(len(pairs) / PAIR_BATCH)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(0.1 * steps), steps)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model.train()
    for start in tqdm(range(0, len(pairs), PAIR_BATCH), desc="few-shot pairs", disable=not show_progress,
                      dynamic_ncols=True):
        chunk = pairs[start:start + PAIR_BATCH]
        sides = [{key: value.to(device) for key, value in collate([items[pair[side]] for pair in chunk]).items()
                  if key in ("input_ids", "attention_mask", "token_type_ids")} for side in (0, 1)]
        similarity = torch.cosine_similarity(mean_pooled(encoder, sides[0]), mean_pooled(encoder, sides[1]))
        target = torch.tensor([pair[2] for pair in chunk], device=device, dtype=similarity.dtype)
        loss = torch.nn.functional.mse_loss(similarity, target)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    torch.random.set_rng_state(generator_state)  # the classifier's training draws as it would without this phase
    return len(pairs)


def pairs_first(run, resume):
    """The pair phase of the few-shot recipe where prepare() chose it (run.few_shot["few_shot_pairs"]), on
    run.model before its trainer wraps it. Not on --resume: the saved state holds the weights it led to."""
    iterations = (run.few_shot or {}).get("few_shot_pairs")
    if not iterations or resume:
        return
    from data_load import TextClassificationCollator
    from utils.log import log
    run.model.to(run.device)
    if run.context.is_main:
        log.info(f"few-shot recipe: the encoder first learns from pairs of the {len(run.train_set)} training texts "
                 f"({iterations} of each kind per text, SetFit's contrastive phase; --few_shot_pairs 0: none)")
    pair_phase(run.model, run.train_set, TextClassificationCollator(run.tokenizer), run.device, run.settings.seed,
               iterations, show_progress=run.context.is_main)
