"""Distil a fine-tuned classifier (the teacher) into a smaller, faster student.

    distill_plm.py --teacher_fn T --model_fn S --train_fn F [--unlabeled_fn U] [--student_layers K]

The student learns the teacher's softened outputs (temperature --temperature) and, where a row has a
label, the label too (--soft_weight between the two; training/distillation.py gives the loss and where
its defaults come from). Texts without labels (--unlabeled_fn) are labelled by the teacher: they are
often the larger part of what a student learns from. The student is the teacher cut to --student_layers
evenly spaced layers (default: half of them), embeddings and head kept, as DistilBERT was initialised;
or any model named by --pretrained_model_name (cut too with --student_layers), whose tokenizer may
differ: the teacher reads every text with its own. The student has the teacher's labels, trains with
the hand-written loop of finetune_plm_native.py (every training flag below is the same), and is saved
as an ordinary checkpoint: classify_plm.py, evaluate_plm.py, export_plm.py and serve_plm.py load it
as they load any other."""
import dataclasses
import json
from dataclasses import dataclass

import datasets

from checkpoint.run_dir import check_inputs_kept
from checkpoint.saved_model import SavedModel, load_checkpoint
from data_load.dataset import encode_split, training_rows, window_rows
from data_load.sources import unlabelled_file
from data_load.splits import load_unlabelled
from options.parser import float_above, float_range, int_at_least
from options.training_flags import training_options, training_parser
from training.distillation import SOFT_WEIGHT, TEMPERATURE, Teacher, check_student_layers, distillation_loss, keep_layers
from training.finish import check_publishing, publish
from training.loss import loss_function
from training.native_loop import train
from training.prepare import prepare, training_schedule
from utils.errors import UserError, exit_on_user_error
from utils.runtime import init_process_group


def parse_args():
    p = training_parser(__doc__)
    next(action for action in p._actions if action.dest == "pretrained_model_name").help = (
        "the student's starting point, instead of the teacher cut to --student_layers: a local model directory "
        "or hub id (cut too when --student_layers is given)")
    group = p.add_argument_group("distillation")
    group.add_argument("--teacher_fn", required=True,
                       help="the teacher: a model directory written by finetune_plm_native.py/_hf.py (or this script)")
    group.add_argument("--unlabeled_fn",
                       help="texts without labels, which the teacher labels, trained on by the soft loss alone: "
                            "one text a line (`sentence<TAB>pair` for pairs), or a TSV/CSV/JSONL/Parquet table "
                            "whose text column is read, as classify_plm.py --input_fn reads files")
    group.add_argument("--unlabeled_text_column",
                       help="the text column of a table given as --unlabeled_fn (default: --text_column, else the "
                            "first of text, sentence, document, review, ...)")
    group.add_argument("--student_layers", type=int_at_least(1), default=None,
                       help="keep this many of the teacher's layers, evenly spaced with the first and the last "
                            "(DistilBERT's 0,2,4,7,9,11 of 12); default: half of them, or with "
                            "--pretrained_model_name all of that model's")
    group.add_argument("--temperature", type=float_above(0), default=TEMPERATURE,
                       help="softens both models' outputs for the soft loss (DistilBERT's 2; Hinton et al. 2015)")
    group.add_argument("--soft_weight", type=float_range(0, 1), default=SOFT_WEIGHT,
                       help="weight of the soft loss (KL divergence to the teacher, times temperature squared); "
                            "the labels' cross-entropy gets 1 - this, on the rows that have a label (alpha 0.5 "
                            "as in the transformers distillation examples)")
    return p.parse_args()


@dataclass(frozen=True)
class DistillOptions:
    """The distillation's own flags, as settled by student_flags (the student's layers)."""
    teacher_fn: str
    unlabeled_fn: str | None
    unlabeled_text_column: str | None
    student_layers: int | None  # None: the student keeps every layer of --pretrained_model_name
    temperature: float
    soft_weight: float


def main():
    args = parse_args()
    repo_id = check_publishing(args.push_to_hub)  # checked now, so that a run is never lost at the push
    teacher = SavedModel.read(args.teacher_fn)  # a missing or damaged teacher: one line, before any data is read
    check_flags(args, teacher)
    teacher_layers = teacher_layer_count(teacher)
    from_teacher = args.pretrained_model_name is None
    # the settled flags are recorded (training_args.json, --resume) as if they had been given
    options = training_options(args, **student_flags(args, teacher, teacher_layers))
    flags = options.record
    distill = DistillOptions(**{field.name: flags[field.name] for field in dataclasses.fields(DistillOptions)})
    # the student's labels are the teacher's, in its order: a training label the teacher lacks is refused here
    options = dataclasses.replace(options, data=dataclasses.replace(
        options.data, classes=teacher.labels, classes_of=f"the teacher {distill.teacher_fn}"))
    run = prepare(options, "distill")
    student_name = f"the teacher {distill.teacher_fn}" if from_teacher else run.model_name
    kept = keep_layers(run.model, distill.student_layers, student_name) if distill.student_layers else None
    unlabelled = read_unlabelled(distill, options, run) if distill.unlabeled_fn else None
    init_process_group(run.context, run.device)  # the teacher's predictions are sharded across processes
    train_set, teacher_valid = teacher_targets(distill, options, run, unlabelled)
    n_unlabelled = len(unlabelled) if unlabelled else 0
    run = dataclasses.replace(run, train_set=train_set, n_train_texts=run.n_train_texts + n_unlabelled,
                              schedule=training_schedule(len(train_set), run.settings, run.context.world_size))

    soft_weight, temperature = distill.soft_weight, distill.temperature
    hard = f"{1 - soft_weight:g} x the labels' {'binary ' if run.splits.multi_label else ''}cross-entropy"
    notes = [
        f"  distillation: teacher = {distill.teacher_fn} ({teacher_layers} layers); on validation {teacher_valid}",
        "  student = " + (f"layers {', '.join(map(str, kept))} of " if kept else "")
        + (f"the teacher's {teacher_layers}" if from_teacher else run.model_name),
        f"  training texts = {len(run.splits.train)} labelled + {n_unlabelled} unlabelled"
        + (f" ({distill.unlabeled_fn}, labelled by the teacher)" if unlabelled else ""),
        f"  loss = {soft_weight:g} x T^2 x {'BCE to sigmoid' if run.splits.multi_label else 'KL to softmax'}"
        f"(teacher / T), T = {temperature:g}, + {hard} (labelled rows)",
    ]
    record = {"distillation": {"teacher_fn": str(distill.teacher_fn), "temperature": temperature,
                               "soft_weight": soft_weight, "teacher_layers": teacher_layers,
                               "student_layers": run.model.config.num_hidden_layers, "layers_kept": kept,
                               "student_from": str(teacher.path) if from_teacher else run.model_name,
                               "n_unlabeled": n_unlabelled}}
    hard_loss = loss_function(run.class_weights, run.splits.multi_label)
    train(options, run, "distill", distillation_loss(hard_loss, run.splits.multi_label, temperature, soft_weight),
          notes, record)
    publish(options, repo_id, run.context.is_main)


def check_flags(args, teacher):
    """What the teacher and the flags must agree on, before any data is read."""
    if args.hp_search:
        raise UserError("--hp_search: distill_plm.py trains one student; search a teacher's flags with "
                        "finetune_plm_native.py/_hf.py --hp_search, then distil the winner")
    if args.lora_r is not None:
        # the student is a new, smaller model (layers cut from the teacher): it needs every weight to train
        raise UserError("--lora_r: distill_plm.py trains its student in full; train LoRA adapters with "
                        "finetune_plm_native.py/_hf.py --lora_r")
    if args.cv:
        raise UserError("--cv: distill_plm.py trains one student; cross-validate with finetune_plm_native.py/_hf.py "
                        "--cv K")
    if teacher.regression or args.regression:
        raise UserError(f"{'--regression' if args.regression else args.teacher_fn + ' is a regression model'}: "
                        "distillation here is for classifiers (single- or multi-label)")
    if args.multi_label and not teacher.multi_label:
        raise UserError(f"--multi_label: the teacher {args.teacher_fn} is a single-label classifier; drop the flag")
    if args.soft_weight == 0 and args.unlabeled_fn:
        raise UserError("--soft_weight 0 trains on the labels alone, so --unlabeled_fn would teach nothing: "
                        "raise --soft_weight or drop --unlabeled_fn")
    check_inputs_kept(args.model_fn, {"--teacher_fn": args.teacher_fn, "--unlabeled_fn": args.unlabeled_fn})
    if args.unlabeled_fn:
        unlabelled_file(args.unlabeled_fn)
    elif args.unlabeled_text_column:
        raise UserError("--unlabeled_text_column: there is no --unlabeled_fn to read it from")


def student_flags(args, teacher, teacher_layers):
    """The flags this script settles from the teacher, {flag: value} (the parsed ones stay as they are): a
    multi-label teacher's student is multi-label, its data read as the teacher's was; the student cut from the
    teacher (no --pretrained_model_name) keeps --student_layers of its layers, by default half."""
    settled = {"multi_label": args.multi_label or (teacher.multi_label and not args.label_columns)}
    if args.pretrained_model_name is None:
        settled["student_layers"] = args.student_layers or max(1, teacher_layers // 2)
        check_student_layers(settled["student_layers"], teacher_layers, f"the teacher {args.teacher_fn}")
        settled["pretrained_model_name"] = str(teacher.path)
    return settled


def read_unlabelled(distill, options, run):
    try:
        return load_unlabelled(distill.unlabeled_fn, options.data, run.splits.has_pairs,
                               distill.unlabeled_text_column)
    except UserError as error:  # the readers' messages name the training data's flag
        raise UserError(str(error).replace("--text_column", "--unlabeled_text_column")) from None


def teacher_layer_count(teacher):
    config = json.loads((teacher.path / "config.json").read_text(encoding="utf-8"))
    return config.get("num_hidden_layers") or config.get("n_layers") or 0


def teacher_targets(distill, options, run, unlabelled):
    """(the student's training rows, each with its text's teacher logits: the labelled rows, then the
    unlabelled ones; the teacher's validation scores as a line)."""
    teacher = Teacher(load_checkpoint(distill.teacher_fn, run.device), run, options)
    parts = [with_logits(run.train_set, run.text_of_window, teacher.logits(run.splits.train))]
    if unlabelled is not None:
        encoded = encode_split(unlabelled, run.splits.labels, run.tokenizer, run.max_length,
                               options.run.preprocessing_num_workers, options.data.cache_dir,
                               long_text=run.long_text, stride=run.stride)
        parts.append(with_logits(*window_rows(encoded), teacher.logits(unlabelled)))
    return datasets.concatenate_datasets(parts), teacher.validation_line(run.splits.valid)


def with_logits(rows, text_of_window, logits):
    """The student's training rows with their texts' teacher logits (sliding windows: each its text's)."""
    return training_rows(rows, teacher_logits=logits if text_of_window is None else logits[text_of_window])


if __name__ == "__main__":
    exit_on_user_error(main)
