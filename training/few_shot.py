"""--few_shot: the recipe for a small training set, in the order it runs: a pair phase for the encoder (pair_phase,
SetFit's contrastive phase on mean-pooled embeddings), a layer that hands the mean to the first-token head
(add_mean_pooling_layer), the head fitted alone (fit_head), then the whole model fine-tuned with the schedule below
at FEW_SHOT_PAIRS_LR. The defaults (3 epochs of batches of 32) were tuned on thousands of rows; on emotion with 16
examples a class (96 rows) they make 9 optimizer steps and score below always predicting the majority class (issue
30: 0.257 and 0.230 on two draws, majority 0.348). The recipe gives such a set enough small steps instead: batches
of FEW_SHOT_BATCH, as many epochs as reach FEW_SHOT_STEPS optimizer steps (at most FEW_SHOT_MAX_EPOCHS). Its figures
against the defaults and SetFit: docs/accuracy.md ("Few labels"), bench/few_shot.py.

Only the schedule flags left at their defaults change (a flag given on the command line is kept), and the model is
an ordinary one of its architecture (with the pair phase, one layer more), so it is saved, loaded, exported and
served like any other; training_args.json records the values used."""
import dataclasses
import math
import random

from checkpoint.pretrained import output_layer

# auto: the recipe when the training set has at most this many examples per class on average (SetFit's
# range, 8 to 64 a class; at 64 on SST-2, 3 draws, the recipe 0.763 against the defaults' 0.680); the bundled
# sample (216 a class) and the benches' 4,000-row emotion keep the defaults
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
# The classifier's learning rate after the pair phase (and the pooling layer below), where --lr is not given: the
# default for MiniLM's width (2e-4) moves the encoder the phase trained too far on 14-48 texts. SST-2, 8 a class,
# 5 draws, with the pooling layer: 0.620 at 2e-4, 0.649 at 5e-5 (SetFit 0.628); docs/accuracy.md ("Few labels").
FEW_SHOT_PAIRS_LR = 5e-5
PAIR_BATCH = 16  # SetFit's batch size
PAIR_LR = 2e-5  # SetFit's body learning rate


def with_pair_phase(settings, few_shot, iterations):
    """The recipe's flags with the pair phase (iterations pairs of each kind per text): few_shot_pairs recorded,
    and the classifier's learning rate FEW_SHOT_PAIRS_LR where --lr was left to its default."""
    few_shot = dict(few_shot, few_shot_pairs=iterations)
    if settings.lr is None:
        settings, few_shot["lr"] = dataclasses.replace(settings, lr=FEW_SHOT_PAIRS_LR), FEW_SHOT_PAIRS_LR
    return settings, few_shot


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


ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def on_device(batch, device, keys):
    """The collated batch's tensors named in keys, on the device."""
    return {key: value.to(device) for key, value in batch.items() if key in keys}


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

    from data_load.dataset import model_inputs
    items = list(model_inputs(train_set))
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
        sides = [on_device(collate([items[pair[side]] for pair in chunk]), device, ENCODER_INPUTS) for side in (0, 1)]
        similarity = torch.cosine_similarity(mean_pooled(encoder, sides[0]), mean_pooled(encoder, sides[1]))
        target = torch.tensor([pair[2] for pair in chunk], device=device, dtype=similarity.dtype)
        loss = torch.nn.functional.mse_loss(similarity, target)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    torch.random.set_rng_state(generator_state)  # the classifier's training draws as it would without this phase
    return len(pairs)


# The pair phase trains the mean of the token states, but a sequence-classification head reads the first token,
# which on MiniLM points elsewhere (cosine with the mean 0.34-0.35 on two sentences; after an added pooling layer
# 0.999). The layer below writes the mean into every position, the first included, so the head reads what the
# pair phase trained, and the checkpoint stays an ordinary model of its architecture (one layer more: classify,
# export, serve and pipeline load it as any other). Its figures: docs/accuracy.md ("Few labels").
MEAN_POOL_SCALE = 100.0  # the mean's weight against the first token's own state in the layer's residual sum


def add_mean_pooling_layer(model):
    """Append to the encoder of a BERT-shaped model (BERT, RoBERTa, ELECTRA...: layers of attention.self.query/
    key/value, attention.output and output) a layer that writes the mean of the previous layer's token states
    over the real tokens into every position: queries and keys of zero make the attention uniform over the
    unmasked tokens, values the identity; the mean, scaled by MEAN_POOL_SCALE, outweighs the residual and the
    layer norm returns it standardized; the feed-forward part adds zero. Returns False (the model unchanged)
    for other layer shapes."""
    import copy
    import torch
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    last = layers[-1] if layers else None
    try:
        attention, mixed, feed_forward = last.attention.self, last.attention.output, last.output
        linears = (attention.query, attention.key, attention.value, mixed.dense, feed_forward.dense)
        norms = (mixed.LayerNorm, feed_forward.LayerNorm)
    except AttributeError:
        return False
    if not (all(isinstance(module, torch.nn.Linear) for module in linears)
            and all(isinstance(module, torch.nn.LayerNorm) for module in norms)):
        return False
    layer = copy.deepcopy(last)
    size = attention.value.weight.shape[0]
    identity = torch.eye(size, dtype=attention.value.weight.dtype)
    with torch.no_grad():
        for linear in (layer.attention.self.query, layer.attention.self.key, layer.output.dense):
            linear.weight.zero_()
            linear.bias.zero_()
        layer.attention.self.value.weight.copy_(identity)
        layer.attention.self.value.bias.zero_()
        layer.attention.output.dense.weight.copy_(identity * MEAN_POOL_SCALE)
        layer.attention.output.dense.bias.zero_()
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    if hasattr(layer.attention.self, "layer_idx"):
        layer.attention.self.layer_idx = len(layers)
    layers.append(layer)
    model.config.num_hidden_layers = len(layers)
    return True


# Then the head, fitted on the encoder as the pair phase left it (frozen), as SetFit fits its logistic regression,
# before the whole model is fine-tuned at FEW_SHOT_PAIRS_LR: from a random head that rate trained 6 classes too
# slowly (emotion, 8 a class, draws 0-1: 0.324 against 0.359 at 2e-4), which itself moved the encoder too far on
# SST-2. Linear probing, then fine-tuning (Kumar et al. 2022); figures: docs/accuracy.md ("Few labels").
HEAD_STEPS = 100
HEAD_BATCH = 64
HEAD_LR = 1e-3
# The head's output weights held small while it is fitted, as SetFit's logistic regression holds its own
# (scikit-learn's default C = 1: the loss per text plus |W|^2 / (2 C n)). Unpenalized, the head drove the loss to
# ~0.005 on SST-2's 28 texts and the fine-tune after it barely moved; SST-2, 16 a class, 5 draws: 0.689 against
# 0.681 without it (SetFit 0.687); docs/accuracy.md ("Few labels").
HEAD_C = 1.0


def head_parameters(model):
    """The parameters of a sequence-classification model outside its embeddings and layers (BERT: the pooler and
    the classifier; RoBERTa and ELECTRA: the classification head; DistilBERT: pre_classifier and classifier)."""
    base = model.base_model
    body = {id(parameter) for name in ("embeddings", "encoder", "transformer")
            if hasattr(base, name) for parameter in getattr(base, name).parameters()}
    return [parameter for parameter in model.parameters() if id(parameter) not in body]


def fit_head(model, train_set, collate, device, seed, steps=HEAD_STEPS, lr=HEAD_LR):
    """The head (head_parameters) trained alone, the rest frozen and without dropout: steps of AdamW on seeded
    batches of HEAD_BATCH training texts with the model's own loss and an L2 penalty on the output layer's weights
    (HEAD_C). Returns the last batch's loss, penalty included."""
    import torch

    from data_load.dataset import model_inputs
    items = list(model_inputs(train_set))
    head = head_parameters(model)
    output_weight = output_layer(model).weight
    trainable = {parameter: parameter.requires_grad for parameter in model.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad = False
    for parameter in head:
        parameter.requires_grad = True
    optimizer = torch.optim.AdamW(head, lr=lr)
    rng = random.Random(seed)
    model.eval()
    loss = None
    for _ in range(steps):
        chunk = items if len(items) <= HEAD_BATCH else rng.sample(items, HEAD_BATCH)
        loss = model(**on_device(collate(chunk), device, (*ENCODER_INPUTS, "labels"))).loss
        loss = loss + output_weight.pow(2).sum() / (2 * HEAD_C * len(items))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for parameter, was in trainable.items():
        parameter.requires_grad = was
    model.train()
    return loss.item() if loss is not None else None


def pairs_first(run, resume):
    """The pair phase of the few-shot recipe where prepare() chose it (run.few_shot["few_shot_pairs"]), on
    run.model before its trainer wraps it, then the mean-pooling layer (add_mean_pooling_layer) and the head fitted
    alone (fit_head). On --resume only the layer: the saved state holds the weights the rest led to."""
    iterations = (run.few_shot or {}).get("few_shot_pairs")
    if not iterations:
        return
    if resume:  # the saved state holds the pooling layer's weights, trained since: the layer must be there to take them
        add_mean_pooling_layer(run.model)
        return
    from data_load import TextClassificationCollator
    from utils.log import log
    collate = TextClassificationCollator(run.tokenizer)
    run.model.to(run.device)
    if run.context.is_main:
        log.info(f"few-shot recipe: the encoder first learns from pairs of the {len(run.train_set)} training "
                 f"texts ({iterations} of each kind per text, SetFit's contrastive phase; --few_shot_pairs 0: none)")
    pair_phase(run.model, run.train_set, collate, run.device, run.settings.seed, iterations,
               show_progress=run.context.is_main)
    if add_mean_pooling_layer(run.model) and run.context.is_main:
        log.info("few-shot recipe: a last layer passes the mean of the tokens, which the pairs trained, to the "
                 "classifier (which reads the first token)")
    loss = fit_head(run.model, run.train_set, collate, run.device, run.settings.seed)
    if run.context.is_main:
        log.info(f"few-shot recipe: the head fitted first on the paired encoder ({HEAD_STEPS} steps at "
                 f"{HEAD_LR:g}, the rest frozen; loss {loss:.4f}), then the whole model fine-tunes")
