"""A worker process of the local engine, started by batch.local_engine through utils.processes.run_tasks:
it loads the model once, at its first shard, then classifies whole shards, one a task, and dies with the
driver."""
from batch.shard_work import classify_shard, load_worker_classifier
from utils.processes import serve_tasks

_classifier = None


def run(job, shard):
    global _classifier
    if _classifier is None:
        _classifier = load_worker_classifier(job)
    return classify_shard(job, shard, _classifier)


if __name__ == "__main__":
    serve_tasks(run)
