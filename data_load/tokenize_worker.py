"""A tokenizing worker process, started by data_load.encoding through utils.processes.run_workers: it
imports datasets and the tokenizer, not torch, and tokenizes one contiguous shard into a file."""
from utils.processes import worker_main


def run(job, directory, index, n_shards, report):
    import datasets
    datasets.disable_progress_bars()  # the parent shows one bar for all
    job.tokenize_shard(index, n_shards, directory, report)


if __name__ == "__main__":
    worker_main(run)
