"""File mode of classify_plm.py: classify a corpus of any size into a directory of shards, resumably.

    classify_plm.py --model_fn M --input_fn corpus/ --output_fn predictions/

The input (data_load.shards) is cut into shards of --shard_size lines or rows. Each shard is read,
classified through the same Classifier.predict as stdin mode, and written to `.part-NNNNN.parquet.tmp-PID`, then
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
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from batch.local_engine import LOCAL_DEFAULT_HELP, classify_locally, default_workers
from batch.shard_work import ShardJob, part_path
from data_load.shards import Columns, InputFile, Shard, expand_inputs, plan_input, stat_input
from inference.load import check_backend_installed
from options.parser import add_column_flags, int_at_least
from utils.errors import UserError, first_line, on_failure, require
from utils.files import atomic_write
from utils.log import log
from utils.processes import close_lock, open_lock
from utils.runtime import usable_cpus

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
MANIFEST_FORMAT = 1
# flags that change what the part files hold: a rerun with another value is refused (batching, workers
# and the engine only change how fast, so a job started locally may be finished on Ray)
OUTPUT_SETTINGS = ("backend", "quantize", "precision", "max_length", "top_k", "threshold", "with_prob",
                   "keep_columns", "text_column", "text_pair_column", "output_format", "shard_size")
# --explain's settings (inference.explain.ExplainOptions.settings), recorded only when it is on: a manifest
# written before the flag existed, or without it, has none of them, and resumes as it was
EXPLAIN_SETTINGS = ("explain", "explain_method", "explain_steps")


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
                            "; ray: the actors (default: the cluster's CPUs)")
    group.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: processes on this machine; ray: actors on a Ray cluster (pip install -r "
                            "requirements/ray.txt), local or joined with --ray_address")
    group.add_argument("--ray_address",
                       help="an existing Ray cluster (`ray start --head` prints it, e.g. 10.0.0.1:6379, or auto); "
                            "default: a local cluster sized to this machine")
    group.add_argument("--overwrite", action="store_true",
                       help="start over: remove the part files and manifest already in --output_fn")
    return group


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
    check_backend_installed(args.backend)
    if args.engine == "ray":
        require(["ray"], "--engine ray", "pip install -r requirements/ray.txt (ray==2.60.0), or use the default "
                                         "--engine local")


def classify_files(args, saved, explain=None):
    """Classify args.input_fn into args.output_fn; saved: the model's record (checkpoint.saved_model.SavedModel);
    explain: inference.explain.ExplainOptions with --explain (a `words` column), else None."""
    started = time.time()
    output = Path(args.output_fn)
    columns = Columns(args.text_column, args.text_pair_column, args.keep_columns)
    if args.text_pair_column and not saved.pairs:
        raise UserError(f"--text_pair_column: {args.model_fn} was trained on single sentences, not pairs")
    sources = [stat_input(path, columns) for path in expand_inputs(args.input_fn, output)]
    settings = {key: getattr(args, key) for key in OUTPUT_SETTINGS}
    if explain:
        settings.update(explain.settings())
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
        for stale in output.glob(".part-*.tmp*"):  # a killed run's unfinished shard (we hold the lock: nobody writes it)
            stale.unlink()
        (output / SUCCESS).unlink(missing_ok=True)

        job = ShardJob(inputs=sources, columns=columns, output_dir=str(output), output_format=args.output_format,
                  settings=vars(args).copy(), labels=list(saved.labels), pairs=saved.pairs,
                  single=not saved.multi_label and (args.top_k or 1) == 1, explain=explain)
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
            from batch.ray_engine import classify_on_ray
            classify_on_ray(job, pending, args.num_workers, args.ray_address, finished)
        else:
            classify_locally(job, pending, local_workers(args.num_workers), finished)
        progress.close()
        for stale in output.glob(".part-*.tmp*"):  # a retried Ray task's leftovers
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
        close_lock(lock)  # the kernel would at exit; an in-process caller (the tests) needs it now


def local_workers(asked):
    """--num_workers for the local engine, at most one process per core, as training caps its tokenizing
    workers: more wait on each other, each with its own copy of the model (64 on 2 cores ran 6x slower)."""
    cores = usable_cpus()
    if asked and asked > cores:
        log.info(f"note: --num_workers {asked} is more than the {cores} cores here: {cores} worker processes")
        return cores
    return asked or default_workers()


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
    for key in EXPLAIN_SETTINGS:
        if previous["settings"].get(key) != settings.get(key):
            return f"with --{key} {previous['settings'].get(key)} (now {settings.get(key)})"
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
    try:
        output.mkdir(parents=True, exist_ok=True)
        return open_lock(output / ".lock", blocking=False)
    except BlockingIOError:
        raise UserError(f"--output_fn {output}: another classify_plm.py run is writing there now: wait for it, "
                        "or choose another --output_fn") from None
    except OSError as error:
        raise UserError(f"--output_fn {output}: cannot write there ({error.strerror})") from None


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
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(value, ensure_ascii=False, indent=1))


def _clear(output):
    for path in output.iterdir():
        if path.name.startswith(("part-", ".part-")) or path.name in (MANIFEST, SUCCESS):
            path.unlink()
