"""Fine-tune a pretrained language model for sentence classification with transformers.Trainer.

Runs unchanged on one CPU/GPU or under `torchrun --nproc_per_node=N` / `accelerate launch`."""
from options.training_flags import training_options, training_parser
from training.finish import check_publishing, publish
from training.hf_loop import train
from training.cross_validation import cross_validate
from training.hp_search import search
from training.loss import loss_function
from training.prepare import prepare
from utils.errors import exit_on_user_error


def main():
    # the flags, parsed and checked, as the typed options every layer below reads (options/training_flags.py)
    options = training_options(training_parser(__doc__).parse_args())
    repo_id = check_publishing(options.run.push_to_hub)  # checked now, so that a run is never lost at the push
    if options.search.hp_search:  # N trials of this script, each a subprocess; the best one's model is saved
        search(options, "hf", __file__)
        return publish(options, repo_id)
    if options.cross_validation.collects_folds:  # K folds of this script, each a subprocess; oof probabilities
        cross_validate(options, "hf", __file__)
        return publish(options, repo_id) if options.cross_validation.cv_final else None
    run = prepare(options, "hf")  # device, data, model; bad input fails here, before anything is written
    # the loop (training/hf_loop.py) evaluates, keeps the best weights and saves the run
    train(options, run, "hf", loss_function(run.class_weights, run.splits.multi_label, run.regression_scale))
    publish(options, repo_id, run.context.is_main)


if __name__ == "__main__":
    exit_on_user_error(main)
