"""One shard's work, in whichever engine runs it (batch/local_engine.py's processes, batch/ray_engine.py's
actors): the job every worker gets, the classifier loaded once a worker, and a shard read, classified and
written to its part file whole or not at all."""
import json
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from data_load.shards import Columns, shard_examples
from utils.files import atomic_write

OUTPUT_COLUMNS = ("source", "line", "label", "score", "probabilities", "words")


@dataclass
class ShardJob:
    """What a worker needs to classify any shard of the job (no shard list: that stays with the driver)."""
    inputs: list
    columns: Columns
    output_dir: str
    output_format: str
    settings: dict  # the classify flags, {flag: value} (the classifier's become its ClassifierOptions)
    labels: list
    pairs: bool
    single: bool  # one label a row: `label` a string and `score` a number (else lists)
    explain: object = None  # inference.explain.ExplainOptions with --explain (a `words` column), else None

    def classifier_options(self):
        from inference.classifier import ClassifierOptions
        return ClassifierOptions.from_flags(self.settings)


def load_worker_classifier(job):
    from inference.load import load_classifier
    return load_classifier(job.classifier_options())


def part_path(job, index):
    return Path(job.output_dir) / f"part-{index:05d}.{job.output_format}"


def classify_shard(job, shard, classifier):
    """Read, classify and write one shard: to a temporary name, renamed when complete, so a shard is
    either whole or absent and a retry (a rerun, a Ray task retried) rewrites it from scratch.
    Returns {"shard", "rows", "empty"}."""
    source = job.inputs[shard.source]
    stats = {}
    examples = shard_examples(source, shard, job.columns, job.pairs, stats)
    settings = job.settings
    rows = 0
    explainer = None
    if job.explain:  # --explain: a `words` column (inference/explain.py)
        from inference.explain import explainer_of
        explainer = explainer_of(classifier, job.explain)
    # per process: a Ray task retried elsewhere may write the same shard while the first attempt still runs
    with atomic_write(part_path(job, shard.index), per_process=True) as temporary:
        writer = (ParquetPart if job.output_format == "parquet" else JsonlPart)(temporary, job, source)
        while chunk := list(islice(examples, settings["chunk_size"])):
            # a pair model reads the pair (empty when the row has none); a single-sentence model never does
            items = [(example.text, (example.text_pair or "") if job.pairs else None) for example in chunk]
            prediction = classifier.predict(items, settings["top_k"], settings["threshold"])
            words = explainer.explain_pairs(items, prediction.label_ids) if explainer else None
            writer.write(chunk, prediction.probabilities, prediction.scores, prediction.label_ids, words)
            rows += len(chunk)
        writer.close()
    return {"shard": shard.index, "rows": rows, "empty": stats.get("n_empty", 0)}


class Part:
    """The rows of one part file as plain columns: source, line, label, score, probabilities, kept columns."""

    def __init__(self, path, job, source):
        self.path, self.job, self.source = path, job, source
        self.several = len(job.inputs) > 1
        self.kept = None  # input column -> output name, from the first row's record

    def columns(self, chunk, probabilities, scores, ids, words=None):
        labels = self.job.labels
        columns = {}
        if self.several:
            columns["source"] = [self.source.path] * len(chunk)
        columns["line"] = [example.line for example in chunk]
        if self.job.single:
            columns["label"] = [labels[row[0]] for row in ids]
            columns["score"] = [float(row[0]) for row in scores]
        else:
            columns["label"] = [[labels[i] for i in row] for row in ids]
            columns["score"] = [[float(s) for s in row] for row in scores]
        if self.job.settings["with_prob"]:
            columns["probabilities"] = probabilities
        if words is not None:  # a list per printed label; one label a row: its list alone, as label and score
            columns["words"] = [row[0] for row in words] if self.job.single else words
        if self.job.columns.keep:
            if self.kept is None:
                names = self.source.columns or list(chunk[0].record)
                if self.source.kind == "reference":
                    names = ["label", "text", "text_pair"]
                self.kept = {name: f"input_{name}" if str(name) in OUTPUT_COLUMNS else str(name) for name in names}
            for name, out in self.kept.items():
                columns[out] = [example.record.get(name) for example in chunk]
        return columns


class ParquetPart(Part):
    def __init__(self, path, job, source):
        super().__init__(path, job, source)
        self.writer = None
        # the temporary file from the shard's start (the writer opens it at the first chunk, which is often the
        # whole shard): the output directory shows which shards are running; bench/classify_scale.py times by it
        Path(path).touch()
        self.input_schema = None
        if source.kind == "parquet" and job.columns.keep:
            import pyarrow.parquet as pq
            self.input_schema = pq.read_schema(source.path)

    def write(self, chunk, probabilities, scores, ids, words=None):
        import pyarrow as pa
        columns = self.columns(chunk, probabilities, scores, ids, words)
        arrays, names = [], []
        for name, values in columns.items():
            if name == "probabilities":
                values = pa.StructArray.from_arrays([pa.array(values[:, i]) for i in range(values.shape[1])],
                                                    names=self.job.labels)
            elif name == "score":
                values = pa.array(values, pa.float32() if self.job.single else pa.list_(pa.float32()))
            elif name == "label":
                values = pa.array(values, pa.string() if self.job.single else pa.list_(pa.string()))
            elif name == "line":
                values = pa.array(values, pa.int64())
            elif name == "words":
                values = pa.array([[{"word": w, "attribution": a} for w, a in row] for row in values]
                                  if self.job.single else
                                  [[[{"word": w, "attribution": a} for w, a in label] for label in row]
                                   for row in values], words_type(self.job.single))
            elif self.input_schema is not None and name not in ("source",):
                original = next(k for k, v in self.kept.items() if v == name)
                values = pa.array(values, self.input_schema.field(original).type)
            elif self.source.kind != "jsonl" or name == "source":
                values = pa.array(values, pa.string())
            else:
                values = pa.array(values)
            arrays.append(values)
            names.append(name)
        table = pa.Table.from_arrays(arrays, names=names)
        if self.writer is None:
            import pyarrow.parquet as pq
            schema = table.schema.with_metadata({"finetune_plm.labels": json.dumps(self.job.labels)})
            self.writer = pq.ParquetWriter(self.path, schema)
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self):
        if self.writer is None:  # an empty shard (only blank lines): an empty file with the prediction columns
            import pyarrow as pa
            import pyarrow.parquet as pq
            fields = ([pa.field("source", pa.string())] if self.several else []) + [
                pa.field("line", pa.int64()),
                pa.field("label", pa.string() if self.job.single else pa.list_(pa.string())),
                pa.field("score", pa.float32() if self.job.single else pa.list_(pa.float32()))]
            if self.job.explain:
                fields.append(pa.field("words", words_type(self.job.single)))
            pq.write_table(pa.schema(fields).empty_table(), self.path)
            return
        self.writer.close()


def words_type(single):
    """Parquet's `words`: a list of {word, attribution} structs (JSONL: [word, attribution] pairs, as stdout has
    them), a list of such lists for a multi-label model or --top_k."""
    import pyarrow as pa
    words = pa.list_(pa.struct([("word", pa.string()), ("attribution", pa.float32())]))
    return words if single else pa.list_(words)


class JsonlPart(Part):
    def __init__(self, path, job, source):
        super().__init__(path, job, source)
        self.file = open(path, "w", encoding="utf-8")

    def write(self, chunk, probabilities, scores, ids, words=None):
        columns = self.columns(chunk, probabilities, scores, ids, words)
        if "probabilities" in columns:
            columns["probabilities"] = [dict(zip(self.job.labels, map(float, row))) for row in probabilities]
        names = list(columns)
        for values in zip(*columns.values()):
            self.file.write(json.dumps(dict(zip(names, values)), ensure_ascii=False, default=str) + "\n")

    def close(self):
        self.file.close()
