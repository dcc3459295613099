"""File mode of classify_plm.py: classify a corpus of any size into a directory of shards, resumably.

    classify_plm.py --model_fn M --input_fn corpus/ --output_fn predictions/

The input (data_load.shards) is cut into shards of --shard_size lines or rows. Each shard is read,
classified through the same Classifier.predict as stdin mode, and written to `.part-NNNNN.*.tmp`, then
renamed to `part-NNNNN.parquet` (or .jsonl): a part file exists only complete. `_manifest.json` records the
plan (inputs and shards), the model's identity (a digest of its weights, tokenizer and record) and the
settings that shape the output; a rerun of the same command classifies only the shards without a part
file, and a rerun with another model, other inputs or other output settings is refused, naming what
changed (--overwrite starts over). When every shard is there, `_SUCCESS` is written, as Spark does.
Files starting with `_` or `.` are skipped by Spark, pyarrow.dataset and Ray Data, so the directory
reads as one table: `pd.read_parquet("predictions/")`.

Engines: local (this module; processes on this machine) and ray (batch/ray_engine.py: the same
shards on a Ray cluster). The local engine never imports ray (a test checks)."""
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

from data_load.shards import Columns, InputFile, Shard, expand_inputs, plan_input, shard_examples, stat_input
from inference.classifier import check_backend_installed
from options.parser import add_column_flags, int_at_least
from utils.errors import UserError, first_line, on_failure, require
from utils.log import log

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
MANIFEST_FORMAT = 1
# flags that change what the part files hold: a rerun with another value is refused (batching, workers
# and the engine only change how fast, so a job started locally may be finished on Ray)
OUTPUT_SETTINGS = ("backend", "quantize", "precision", "max_length", "top_k", "threshold", "with_prob",
                   "keep_columns", "text_column", "text_pair_column", "output_format", "shard_size")
OUTPUT_COLUMNS = ("source", "line", "label", "score", "probabilities")


def add_file_flags(parser):
    """--input_fn/--output_fn and what goes with them (file mode)."""
    group = parser.add_argument_group(
        "file mode (--input_fn and --output_fn instead of stdin and stdout)")
    group.add_argument("--input_fn",
                       help="a file, a directory of files or a glob: .txt (one text a line, as on stdin), "
                            ".tsv/.csv/.jsonl read with the training readers and --text_column/--text_pair_column "
                            "(a .tsv without them: training's `label<TAB>sentence`), .parquet")
    group.add_argument("--output_fn",
                       help="a directory of part-NNNNN.parquet shards with `line` (1-based line or row in its "
                            "source), `source` (with several inputs), `label`, `score`; rerunning the same command "
                            "after an interruption does only the missing shards")
    group.add_argument("--output_format", choices=["parquet", "jsonl"], default="parquet")
    add_column_flags(group, labels=False)
    group.add_argument("--keep_columns", action="store_true",
                       help="copy the input's columns into the output (one that is named like an output column "
                            "gets the prefix input_, e.g. input_label)")
    group.add_argument("--shard_size", type=int_at_least(1), default=10_000,
                       help="lines (rows) a shard: the unit of work, of parallelism and of what a rerun redoes")
    group.add_argument("--num_workers", type=int_at_least(1), default=None,
                       help="shards classified at once. local engine default: " + LOCAL_DEFAULT_HELP +
                            "; ray: the actors in the pool (default: the cluster's CPUs)")
    group.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: processes on this machine; ray: Ray Data on a Ray cluster (pip install -r "
                            "requirements/ray.txt), local or joined with --ray_address")
    group.add_argument("--ray_address",
                       help="an existing Ray cluster (`ray start --head` prints it, e.g. 10.0.0.1:6379, or auto); "
                            "default: a local cluster sized to this machine")
    group.add_argument("--overwrite", action="store_true",
                       help="start over: remove the part files and manifest already in --output_fn")
    return group


LOCAL_DEFAULT_HELP = ("one process per core, each with one onnxruntime/torch thread (OMP_NUM_THREADS sets "
                      "them), measured faster than one process with a thread per core")


def cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers():
    """One process per core. bench/classify_scale.py, MiniLM int8 on 2 cores (docs/benchmarks.md): two
    one-thread processes 235 lines/s and 243 lines per CPU-second, one process with two onnxruntime
    threads 151 and 189 (its threads wait on each other at every small matmul of a batch)."""
    return cpu_count()


def threads_per_worker(num_workers):
    """Intra-op threads of each worker: OMP_NUM_THREADS when set, else the cores shared out."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return int(threads) if threads.isdigit() and int(threads) > 0 else max(1, cpu_count() // num_workers)


@dataclass
class Job:
    """What a worker needs to classify any shard of the job (no shard list: that stays with the driver)."""
    inputs: list
    columns: Columns
    output_dir: str
    output_format: str
    settings: dict  # the classify flags (load_classifier reads them)
    labels: list
    pairs: bool
    single: bool  # one label a row: `label` a string and `score` a number (else lists)

    def classifier_args(self):
        from argparse import Namespace
        return Namespace(**self.settings)


def check_file_flags(args):
    """File-mode flags that make no sense alone."""
    if (args.input_fn is None) != (args.output_fn is None):
        raise UserError("--input_fn and --output_fn go together (file mode); without both, classify_plm.py reads "
                        "stdin and writes stdout")
    if args.input_fn is None:
        for flag in ("keep_columns", "overwrite"):
            if getattr(args, flag):
                raise UserError(f"--{flag}: only with --input_fn/--output_fn (file mode)")
        if args.engine != "local" or args.ray_address or args.num_workers:
            raise UserError("--engine, --ray_address and --num_workers apply to file mode (--input_fn/--output_fn)")
    if args.ray_address and args.engine != "ray":
        raise UserError("--ray_address: only with --engine ray")
    check_backend_installed(args)
    if args.engine == "ray":
        require(["ray"], "--engine ray", "pip install -r requirements/ray.txt (ray[data]==2.60.0), or use the default "
                                         "--engine local")


def run(args, saved):
    """Classify args.input_fn into args.output_fn; saved: the model's record (checkpoint.saved_model.SavedModel)."""
    started = time.time()
    output = Path(args.output_fn)
    columns = Columns(args.text_column, args.text_pair_column, args.keep_columns)
    if args.text_pair_column and not saved.pairs:
        raise UserError(f"--text_pair_column: {args.model_fn} was trained on single sentences, not pairs")
    sources = [stat_input(path, columns) for path in expand_inputs(args.input_fn)]
    if any(Path(source.path).resolve().is_relative_to(output.resolve()) for source in sources):
        raise UserError(f"--output_fn {output}: it holds the input; choose another directory")
    settings = {key: getattr(args, key) for key in OUTPUT_SETTINGS}
    if output.is_dir() and not (output / MANIFEST).exists() and any(
            p.name != ".lock" for p in output.iterdir()):
        raise UserError(f"--output_fn {output}: the directory holds files but no {MANIFEST}, so it is not the output "
                        "of classify_plm.py: choose an empty or new directory")
    created = not output.exists()
    lock = _lock(output)
    try:
        shards, job = [], None

        def keep_finished():
            """On an error: the finished shards stay for the rerun; a directory this run made and left empty goes."""
            finished = sum(part_path(job, shard.index).exists() for shard in shards) if job else 0
            if not finished and created:
                shutil.rmtree(output, ignore_errors=True)
                return None
            return (f"the {finished} finished shard(s) of {len(shards)} are kept in {output}: rerun the same command "
                    "to classify the rest") if finished else None
        on_failure(keep_finished)
        model = model_identity(args, saved)
        previous = _read_manifest(output)
        if previous is not None and args.overwrite:
            _clear(output)
            previous = None
        if previous is not None:
            created = False  # not this run's to remove
            refusal = _what_changed(previous, model, settings, sources, output)
            if refusal:
                raise UserError(f"--output_fn {output} was written {refusal}: rerun with --overwrite to start over, or "
                                "choose another --output_fn")
            sources = [InputFile(**source) for source in previous["inputs"]]
            shards[:] = [Shard(*row) for row in previous["shards"]]
        else:
            for index, source in enumerate(sources):
                shards += plan_input(source, index, args.shard_size, columns, len(shards))
            manifest = {"format": MANIFEST_FORMAT, "model": model, "settings": settings, "labels": list(saved.labels),
                        "inputs": [asdict(source) for source in sources], "shards": [s.as_list() for s in shards],
                        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            _write_json(output / MANIFEST, manifest)
        for stale in output.glob(".part-*.tmp"):  # a killed run's unfinished shard (we hold the lock: nobody writes it)
            stale.unlink()
        (output / SUCCESS).unlink(missing_ok=True)

        job = Job(inputs=sources, columns=columns, output_dir=str(output), output_format=args.output_format,
                  settings=vars(args).copy(), labels=list(saved.labels), pairs=saved.pairs,
                  single=not saved.multi_label and (args.top_k or 1) == 1)
        done = {shard.index for shard in shards if part_path(job, shard.index).exists()}
        pending = [shard for shard in shards if shard.index not in done]
        n_lines = sum(shard.n_lines for shard in shards)
        if done:
            log.info(f"resuming {output}: {len(done)} of {len(shards)} shards already classified, {len(pending)} to go")

        progress = _progress(n_lines, sum(shard.n_lines for shard in shards if shard.index in done))
        totals = {"rows": 0, "empty": 0}

        def finished(result, shard):
            totals["rows"] += result["rows"]
            totals["empty"] += result["empty"]
            progress.update(shard.n_lines)

        if not pending:
            pass
        elif args.engine == "ray":
            from batch.ray_engine import run_ray
            run_ray(job, pending, args.num_workers, args.ray_address, finished)
        else:
            run_local(job, pending, args.num_workers or default_workers(), finished)
        progress.close()
        for stale in output.glob(".part-*.tmp"):  # a retried Ray task's leftovers
            stale.unlink()
        elapsed = time.time() - started
        manifest = _read_manifest(output)
        manifest.update(finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), n_lines=n_lines)
        _write_json(output / MANIFEST, manifest)
        (output / SUCCESS).touch()
        if totals["empty"]:
            log.warning(f"skipped {totals['empty']} row(s) with an empty text")
        log.info(f"classified {totals['rows']} sentences in {elapsed:.2f} s "
                 f"({totals['rows'] / elapsed if elapsed else 0:.1f} sentences/s): {len(shards)} shards in {output}")

    finally:
        lock_release(lock)  # the kernel would at exit; an in-process caller (the tests) needs it now

def run_local(job, pending, num_workers, finished):
    """Shards classified here (one worker), or in num_workers processes, each loading the model once."""
    if not pending:
        return
    if num_workers == 1 or len(pending) == 1:
        _init_worker(threads_per_worker(1))
        classifier = load_worker_classifier(job)
        for shard in pending:
            finished(classify_shard(job, shard, classifier), shard)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    threads = threads_per_worker(num_workers)
    # spawn, not fork: a fork of a process with onnxruntime's or torch's thread pools can deadlock
    with ProcessPoolExecutor(min(num_workers, len(pending)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        running = {}
        queue = iter(pending)
        try:
            for shard in islice(queue, 2 * num_workers):  # a few queued: the driver never holds every shard's task
                running[pool.submit(_classify_in_worker, job, shard)] = shard
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    shard = running.pop(future)
                    finished(_result(future), shard)
                    for more in islice(queue, 1):
                        running[pool.submit(_classify_in_worker, job, more)] = more
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _result(future):
    from concurrent.futures.process import BrokenProcessPool
    try:
        return future.result()
    except BrokenProcessPool:
        raise UserError("a worker process died (killed, or out of memory: try fewer --num_workers)") from None


_worker_classifier = None


def _init_worker(threads):
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by onnxruntime's session (load_session) and by torch
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _classify_in_worker(job, shard):
    global _worker_classifier
    if _worker_classifier is None:
        _worker_classifier = load_worker_classifier(job)
    return classify_shard(job, shard, _worker_classifier)


def load_worker_classifier(job):
    from inference.classifier import load_classifier
    return load_classifier(job.classifier_args())


def part_path(job, index):
    return Path(job.output_dir) / f"part-{index:05d}.{job.output_format}"


def classify_shard(job, shard, classifier):
    """Read, classify and write one shard: to a temporary name, renamed when complete, so a shard is
    either whole or absent and a retry (a rerun, a Ray task retried) rewrites it from scratch.
    Returns {"shard", "rows", "empty"}."""
    source = job.inputs[shard.source]
    final = part_path(job, shard.index)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    stats = {}
    examples = shard_examples(source, shard, job.columns, job.pairs, stats)
    settings = job.settings
    writer = (ParquetPart if job.output_format == "parquet" else JsonlPart)(temporary, job, source)
    rows = 0
    try:
        while chunk := list(islice(examples, settings["chunk_size"])):
            # a pair model reads the pair (empty when the row has none); a single-sentence model never does
            items = [(example.text, (example.text_pair or "") if job.pairs else None) for example in chunk]
            _, probabilities, scores, ids = classifier.predict(items, settings["top_k"], settings["threshold"])
            writer.write(chunk, probabilities, scores, ids)
            rows += len(chunk)
        writer.close()
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    return {"shard": shard.index, "rows": rows, "empty": stats.get("n_empty", 0)}


class Part:
    """The rows of one part file as plain columns: source, line, label, score, probabilities, kept columns."""

    def __init__(self, path, job, source):
        self.path, self.job, self.source = path, job, source
        self.several = len(job.inputs) > 1
        self.kept = None  # input column -> output name, from the first row's record

    def columns(self, chunk, probabilities, scores, ids):
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
        self.input_schema = None
        if source.kind == "parquet" and job.columns.keep:
            import pyarrow.parquet as pq
            self.input_schema = pq.read_schema(source.path)

    def write(self, chunk, probabilities, scores, ids):
        import pyarrow as pa
        columns = self.columns(chunk, probabilities, scores, ids)
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
            pq.write_table(pa.schema(fields).empty_table(), self.path)
            return
        self.writer.close()


class JsonlPart(Part):
    def __init__(self, path, job, source):
        super().__init__(path, job, source)
        self.file = open(path, "w", encoding="utf-8")

    def write(self, chunk, probabilities, scores, ids):
        columns = self.columns(chunk, probabilities, scores, ids)
        if "probabilities" in columns:
            columns["probabilities"] = [dict(zip(self.job.labels, map(float, row))) for row in probabilities]
        names = list(columns)
        for values in zip(*columns.values()):
            self.file.write(json.dumps(dict(zip(names, values)), ensure_ascii=False, default=str) + "\n")

    def close(self):
        self.file.close()


def model_identity(args, saved):
    """What the predictions depend on in the model directory: a digest of each file the chosen backend
    reads (weights or ONNX graph, tokenizer, config and record)."""
    from utils.files import file_digest
    directory = Path(saved.path)
    if args.backend == "onnx":
        from inference.onnx_classifier import ONNX_FILES
        names = [ONNX_FILES[args.quantize]]
    else:
        names = sorted(p.name for p in directory.glob("*.safetensors")) or sorted(
            p.name for p in directory.glob("*.bin"))
    names += ["config.json", "training_args.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    files = {name: file_digest(directory / name) for name in names if (directory / name).is_file()}
    return {"path": str(directory.resolve()), "files": files}


def _what_changed(previous, model, settings, sources, output):
    """None when this run continues the one recorded in the manifest, else what differs, for the refusal."""
    if previous.get("format") != MANIFEST_FORMAT:
        return f"by another version of classify_plm.py (manifest format {previous.get('format')})"
    old = previous["model"]
    changed = sorted(name for name in set(old["files"]) | set(model["files"])
                     if old["files"].get(name) != model["files"].get(name))
    if changed and old["path"] != model["path"]:
        return f"with another model, {old['path']} (now --model_fn {model['path']})"
    if changed:
        return f"with another version of this model ({', '.join(changed)} changed since)"
    for key in OUTPUT_SETTINGS:
        if previous["settings"].get(key) != settings[key]:
            return f"with --{key} {previous['settings'].get(key)} (now {settings[key]})"
    recorded = [InputFile(**source) for source in previous["inputs"]]
    before, now = [source.path for source in recorded], [source.path for source in sources]
    if before != now:
        added, missing = sorted(set(now) - set(before)), sorted(set(before) - set(now))
        what = "; ".join(part for part in (f"{', '.join(added[:3])} added" if added else "",
                                           f"{', '.join(missing[:3])} missing" if missing else "") if part)
        return f"from other input files ({what or 'another order'})"
    columns = Columns(settings["text_column"], settings["text_pair_column"], settings["keep_columns"])
    for old_source, source in zip(recorded, sources):
        if (old_source.size, old_source.mtime_ns) == (source.size, source.mtime_ns):
            continue  # unchanged, as make and Spark judge a file; else compare the content
        plan_input(source, 0, previous["settings"]["shard_size"], columns, 0)
        if source.digest != old_source.digest:
            return f"from another version of {source.path} (its content changed since)"
    return None


def _progress(total, initial):
    try:
        from tqdm import tqdm
    except ImportError:  # the torch-free install has no tqdm: no bar
        class NoBar:
            def update(self, n):
                pass

            def close(self):
                pass
        return NoBar()
    return tqdm(total=total, initial=initial, unit=" lines", unit_scale=True, desc="classify", smoothing=0.1)


def _lock(output):
    """Hold --output_fn for this run: a second run on it refuses at once (an flock the kernel drops if
    the run is killed)."""
    import fcntl
    try:
        output.mkdir(parents=True, exist_ok=True)
        fd = os.open(output / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise UserError(f"--output_fn {output}: cannot write there ({error.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"--output_fn {output}: another classify_plm.py run is writing there now: wait for it, "
                        "or choose another --output_fn") from None
    return fd


def lock_release(fd):
    os.close(fd)


def _read_manifest(output):
    path = output / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot read the manifest ({first_line(error)}): rerun with --overwrite to "
                        "start over") from None


def _write_json(path, value):
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(temporary, path)


def _clear(output):
    for path in output.iterdir():
        if path.name.startswith(("part-", ".part-")) or path.name in (MANIFEST, SUCCESS):
            path.unlink()
