"""The command-line flags: the parser and value types every entry point uses and the flag groups several
commands share (parser.py), and the trainers' flags with the typed options built from them
(training_flags.py). Sits above data_load/ and scoring/ (whose choices the flags offer), below everything
that reads flags."""
