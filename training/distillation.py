"""Knowledge distillation (distill_plm.py): a smaller student trained on a fine-tuned teacher's softened
outputs, on the labelled training rows and on unlabelled text the teacher labels.

The loss of a row (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):
    soft_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
  + (1 - soft_weight) * cross-entropy(student, label)          (rows with a label only)
Multi-label: the soft part is the binary cross-entropy of student / T against sigmoid(teacher / T), the hard
part the labels' binary cross-entropy. T^2 keeps the soft part's gradients at the scale of the hard part's
whatever the temperature (Hinton et al., section 2). The hard part is training.loss.loss_function's, so
--class_weight weighs it as in the other trainers.
Defaults: temperature 2 as DistilBERT's training script (Sanh et al. 2019, transformers'
research_projects/distillation) and the transformers distillation examples (DistillationTrainer: temperature
2, alpha 0.5; Tunstall et al., "Natural Language Processing with Transformers", ch. 8), whose 0.5 is the
soft weight here.

The student by default: the teacher with K of its layers, evenly spaced with the first and the last kept,
embeddings and classification head as they are; DistilBERT was initialised so, from BERT-base's layers
0, 2, 4, 7, 9, 11."""
import numpy as np
import torch
import torch.nn.functional as F

from data_load import TextClassificationCollator
from data_load.collator import NO_LABEL
from data_load.dataset import encode_split
from scoring.metrics import summary_line
from training.evaluation import all_logits, evaluation
from utils.errors import UserError
from utils.runtime import autocast_context, pad_to_multiple_of

TEMPERATURE = 2.0
SOFT_WEIGHT = 0.5


def kept_layers(n_layers, n_kept):
    """n_kept of n_layers layer indices, evenly spaced, the first and the last among them: 6 of 12 are
    DistilBERT's 0, 2, 4, 7, 9, 11."""
    if n_kept == 1:
        return [0]
    return [round(i * (n_layers - 1) / (n_kept - 1)) for i in range(n_kept)]


def check_student_layers(n_kept, n_layers, name):
    """--student_layers must leave a smaller model: 1 to n_layers - 1."""
    if not 1 <= n_kept < n_layers:
        raise UserError(f"--student_layers {n_kept}: {name} has {n_layers} layer{'s' if n_layers != 1 else ''}; "
                        + ("choose 1" if n_layers == 2 else f"choose 1 to {n_layers - 1}" if n_layers > 2 else
                           "it cannot be cut: give a smaller student with --pretrained_model_name"))


def keep_layers(model, n_kept, name):
    """Cut the model's encoder, in place, to n_kept evenly spaced of its layers (kept_layers); embeddings and
    head stay. config.num_hidden_layers (and per-layer config lists such as layer_types) follow, so the
    student saves and loads as an ordinary checkpoint. Works where the layers are one ModuleList of
    config.num_hidden_layers (BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa, DistilBERT, MiniLM); refuses other
    models. Returns the kept indices. name: the model, for messages."""
    n_layers = model.config.num_hidden_layers
    check_student_layers(n_kept, n_layers, name)
    candidates = [path for path, module in model.named_modules()
                  if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers]
    outermost = [path for path in candidates if not any(path.startswith(other + ".") for other in candidates)]
    if len(outermost) != 1:
        raise UserError(f"--student_layers: cannot find the {n_layers} layers of {name} "
                        f"({model.config.model_type}; its layers may be shared, as ALBERT's): give a smaller "
                        "student with --pretrained_model_name instead")
    parent_path, _, attribute = outermost[0].rpartition(".")
    parent = model.get_submodule(parent_path)
    kept = kept_layers(n_layers, n_kept)
    layers = torch.nn.ModuleList([getattr(parent, attribute)[i] for i in kept])
    for index, layer in enumerate(layers):
        for module in layer.modules():  # attention's cache index (transformers 5): its new position
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
    setattr(parent, attribute, layers)
    for key, value in vars(model.config).items():  # e.g. layer_types: one entry per layer
        if "layer" in key and isinstance(value, (list, tuple)) and len(value) == n_layers:
            setattr(model.config, key, type(value)(value[i] for i in kept))
    model.config.num_hidden_layers = n_kept
    return kept


def distillation_loss(hard_loss, multi_label, temperature=TEMPERATURE, soft_weight=SOFT_WEIGHT):
    """loss(logits, teacher_logits, labels=None): the batch's mean over rows of the soft part and, for rows
    with a label (not NO_LABEL), the hard part: hard_loss (training.loss.loss_function) of those rows,
    weighted by their share of the batch. Computed in fp32, also under autocast."""
    squared = temperature ** 2

    def loss(logits, teacher_logits, labels=None):
        logits = logits.float()
        student, teacher = logits / temperature, teacher_logits.float() / temperature
        if multi_label:
            soft = F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
        else:
            soft = F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True,
                            reduction="batchmean")
        total = soft_weight * squared * soft
        if labels is None or soft_weight == 1:
            return total
        labelled = labels.ne(NO_LABEL) if labels.ndim == 1 else labels.ne(NO_LABEL).all(dim=1)
        if not labelled.any():  # a batch of unlabelled text only
            return total
        return total + (1 - soft_weight) * labelled.float().mean() * hard_loss(logits[labelled], labels[labelled])
    return loss


class Teacher:
    """The fine-tuned teacher, run as classify_plm.py runs it (its own tokenizer, max length and long-text
    settings): logits of any split of texts. Its raw logits: the distillation's own temperature softens them
    (a --calibrate temperature would compound with it); its validation line is scored as the model prints."""

    def __init__(self, checkpoint, run, options):
        """checkpoint: checkpoint.saved_model.load_checkpoint's; options: the student's TrainingOptions (how
        the data is tokenized and cached, the evaluation batch size)."""
        self.tokenizer, self.model, self.saved = checkpoint
        self.run, self.options = run, options
        self.collate = TextClassificationCollator(self.tokenizer, pad_to_multiple_of=pad_to_multiple_of(run.precision),
                                                  num_labels=len(self.saved.labels))
        self.autocast = autocast_context(run.device, run.precision)

    def logits(self, split):
        """(texts, labels) float32 logits of a data_load Split, rows in order; each process predicts a shard."""
        return self.logits_of(self.encode(split))

    def encode(self, split):
        long_text, stride, _ = self.saved.long_text_settings()
        return encode_split(split, list(self.saved.labels), self.tokenizer, self.saved.max_length,
                            self.options.run.preprocessing_num_workers, self.options.data.cache_dir,
                            long_text=long_text, stride=stride)

    def logits_of(self, dataset):
        return all_logits(self.model, dataset, self.collate, self.options.schedule.batch_size * 2, self.run.device,
                          self.autocast, self.run.context, self.saved.window_pooling).astype(np.float32)

    def validation_line(self, split):
        """The teacher's scores on the validation split, as the trainers log their own."""
        dataset = self.encode(split)
        metrics = evaluation(self.logits_of(dataset), dataset, list(self.saved.labels), self.saved.threshold,
                             temperature=self.saved.calibration)["metrics"]
        return summary_line(metrics)
