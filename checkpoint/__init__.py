"""What a checkpoint is: the saved model's record every reader reads (saved_model.py), the run directory
with its lock, partial directory and atomic commit (run_dir.py), resumable training states
(train_state.py), what a --resume must match (resume.py), and the pretrained model and tokenizer a run
starts from (pretrained.py). Sits above data_load/ and utils/, below training/ and inference/."""
