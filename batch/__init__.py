"""classify_plm.py's file mode: classify a corpus of files into resumable part files. job.py is the
driver (the plan, the manifest, resume, the local process pool); ray_engine.py runs the same shards on
Ray actors. Sits above inference/, whose classifiers it runs."""
