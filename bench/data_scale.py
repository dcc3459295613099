"""Data scale: how long a trainer takes to get from its start to its first optimizer step, and how much
memory that costs, on training files of 100k, 1M and 10M lines, against the code before the data rework.

    python bench/data_scale.py                                   # 100k, 1M, 10M lines; native, hf, torchrun
    python bench/data_scale.py --sizes 100000 --trainers native --no_torchrun
    python bench/data_scale.py --extra_args "--preprocessing_num_workers 2" --json scale.json

For each size N a file <workdir>/train_<N>.tsv of N `label<TAB>sentence` lines is written (seeded, drawn
with replacement half from the emotion train split, half from NSMC's with 0/1 written neg/pos: 8 labels)
and kept for the next run of the bench. Then each trainer runs as a user would run it, in a process of its own:

    python finetune_plm_<trainer>.py --model_fn <workdir>/model_<trainer>_<N> --train_fn <file>
        --max_steps 5 --cache_dir <workdir>/cache_<N> --batch_size 32 [--extra_args]

  first     with an empty cache dir: reads and tokenizes the file
  second    the same command again: should find the tokenized data in the cache
  torchrun  python -m torch.distributed.run --standalone --nproc_per_node=2 finetune_plm_native.py ...
            --device cpu, with an empty cache dir of its own: one process should tokenize, the other load
  baseline  finetune_plm_native.py of --baseline_ref (git worktree <workdir>/baseline; no --max_steps nor
            --cache_dir there: --n_epochs 1, killed as soon as its plan is printed), sizes up to
            --baseline_max_size

Measured per run:
  prep s       start of the process until stderr shows `***** Running training` (the plan every trainer
               prints right before its first step; in the old code too, after all data is read and tokenized)
  RSS at plan  the largest VmHWM (peak RSS so far) among the process and its descendants when the plan
               line is read: the memory of the data set-up, comparable with the baseline (killed there);
               "vs baseline RSS" compares this column
  tree RSS MB  the largest sum of VmRSS over the process and all its descendants (tokenizing workers
               included), sampled every 0.1 s over the whole run: the figure issue 23 bounds (1.5 GB at 1M
               lines). It counts pages a forked worker shares with its parent once per process.
  tree PSS MB  the same with PSS (/proc/PID/smaps_rollup: a shared page split among its sharers): the
               memory the machine really gives the run
  peak RSS MB  ru_maxrss of os.wait4 on the process: the peak of its largest single process over the
               whole run, 5 steps and what follows them included (for torchrun, of the largest worker).
               A child's ru_maxrss starts from this bench's own RSS at exec, so the bench writes the data
               files in a subprocess and imports torch only after the last run.
  cache        hit: stderr had a line with `reusing tokenized` and none with `tokenizing`; miss: the reverse
               (progress-bar lines are not counted); torchrun shows both counts
  total s      the whole process (the baseline's ends when it is killed)
Run it on a machine nobody else is using: prep time on 10M lines is mostly one CPU's tokenizing."""
import argparse
import collections
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import ROOT, emotion, git_commit, machine, nsmc, require_shared, table

PLAN = "***** Running training"
HIT = "reusing tokenized"
MISS = "tokenizing"
PROGRESS_BAR = re.compile(r"\d%\||\d+it \[|it/s\]|s/it\]")  # tqdm refreshes: not a message of their own
ERROR_LINE = re.compile(r"^(error|\w+(\.\w+)*(Error|Exception)):|Killed")  # not the summary torchrun adds
NSMC_LABELS = {"0": "neg", "1": "pos"}
COLUMNS = ["lines", "run", "prep s", "vs baseline prep", "RSS at plan MB", "vs baseline RSS", "tree RSS MB",
           "tree PSS MB", "peak RSS MB", "cache", "cache MB", "total s"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=sizes, default=[100_000, 1_000_000, 10_000_000],
                   help="comma-separated line counts of the training files (default: 100000,1000000,10000000)")
    p.add_argument("--trainers", type=trainers, default=["native", "hf"],
                   help="comma-separated, of native and hf (default: native,hf)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/data_scale"),
                   help="data files, caches, models and the baseline worktree (default: /tmp/data_scale)")
    p.add_argument("--baseline_ref", default="c86a1c1", help="commit before the data-module rework (default: c86a1c1)")
    p.add_argument("--baseline_max_size", type=int, default=1_000_000,
                   help="run the baseline for sizes up to this (default: 1000000; 0: never)")
    p.add_argument("--no_torchrun", action="store_true", help="skip the 2-process torchrun run of the native trainer")
    p.add_argument("--extra_args", default="", help='appended to every new-code trainer command, e.g. '
                                                    '"--preprocessing_num_workers 2"')
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds a run may take before it is killed "
                                                                   "(default: 10800)")
    p.add_argument("--keep", action="store_true", help="keep the model dirs (default: deleted after each run)")
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic files (default: 0)")
    p.add_argument("--write_file", type=Path, help=argparse.SUPPRESS)  # worker: write one data file
    p.add_argument("--write_lines", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_file:
        return write_data(args.write_file, args.write_lines, args.seed)

    require_shared()
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.extra_args)
    commit = git_commit()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TOKENIZERS_PARALLELISM", None)
    baseline = None
    if any(n <= args.baseline_max_size for n in args.sizes):
        baseline = baseline_worktree(args.workdir / "baseline", args.baseline_ref)

    results = []
    for n in args.sizes:
        train_fn = data_file(args.workdir, n, args.seed)
        cache = args.workdir / f"cache_{n}"
        if baseline and n <= args.baseline_max_size:
            model = args.workdir / f"model_baseline_{n}"
            command = [sys.executable, "finetune_plm_native.py", "--model_fn", str(model), "--train_fn", str(train_fn),
                       "--n_epochs", "1", "--batch_size", "32"]
            results.append(run(n, f"baseline ({args.baseline_ref})", command, baseline, env, model, args,
                               stop_at_plan=True))
        for trainer in args.trainers:
            model = args.workdir / f"model_{trainer}_{n}"
            command = [sys.executable, f"finetune_plm_{trainer}.py", *new_flags(model, train_fn, cache), *extra]
            remove(cache)
            results.append(run(n, f"{trainer} first", command, ROOT, env, model, args, cache=cache))
            results.append(run(n, f"{trainer} second", command, ROOT, env, model, args, cache=cache))
        if not args.no_torchrun:
            model, cache = args.workdir / f"model_torchrun_{n}", args.workdir / f"cache_{n}_torchrun"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       "finetune_plm_native.py", *new_flags(model, train_fn, cache), "--device", "cpu", *extra]
            remove(cache)
            results.append(run(n, "torchrun 2x native first", command, ROOT, env, model, args, cache=cache))
            remove(cache)
        remove(args.workdir / f"cache_{n}")

    print(f"\nmachine: {machine()}\ncommit: {commit}; baseline: {args.baseline_ref}; "
          f"extra args: {args.extra_args or 'none'}\n")
    print(table(report_rows(results), COLUMNS))
    print()
    for line in second_vs_first(results, args.trainers):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "commit": commit, "baseline_ref": args.baseline_ref,
                                         "extra_args": args.extra_args, "runs": results}, indent=1) + "\n")
        print(f"\nraw figures: {args.json}")


def sizes(text):
    try:
        values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated line counts, e.g. 100000,1000000") from None
    if not values or min(values) < 100:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 100 lines per file (the trainers split off 10%)")
    return values


def trainers(text):
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or set(values) - {"native", "hf"}:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated, of native and hf")
    return values


def new_flags(model, train_fn, cache):
    return ["--model_fn", str(model), "--train_fn", str(train_fn), "--max_steps", "5", "--cache_dir", str(cache),
            "--batch_size", "32"]


# ---- data files ----------------------------------------------------------------------------------

def data_file(workdir, n, seed):
    """<workdir>/train_<n>.tsv, written (in a subprocess, so this process stays small) unless a file
    with n lines is already there."""
    path = workdir / f"train_{n}.tsv"
    if path.exists() and count_lines(path) == n:
        print(f"{path}: reused", file=sys.stderr)
        return path
    started = time.monotonic()
    subprocess.run([sys.executable, __file__, "--write_file", str(path), "--write_lines", str(n), "--seed", str(seed)],
                   check=True)
    print(f"{path}: written in {time.monotonic() - started:.0f} s ({path.stat().st_size / 2**20:.0f} MB)",
          file=sys.stderr)
    return path


def write_data(path, n, seed):
    """n lines drawn with replacement, half from emotion (6 labels), half from NSMC (neg/pos); written
    in chunks to a temporary name, renamed when complete."""
    sources = [emotion("train"), [(NSMC_LABELS[label], text) for label, text in nsmc("train")]]
    sources = [[f"{label}\t{' '.join(text.split())}\n" for label, text in rows] for rows in sources]
    rng = random.Random(seed)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as out:
        for start in range(0, n, 50_000):
            out.write("".join(rng.choice(sources[rng.random() < 0.5]) for _ in range(min(50_000, n - start))))
    partial.replace(path)


def count_lines(path):
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            lines += chunk.count(b"\n")
    return lines


# ---- one measured run ----------------------------------------------------------------------------

class Watch:
    """Reads a child's stream line by line as it comes: when the plan appears, the cache messages, a tail."""

    def __init__(self, started, pid, on_plan):
        self.started, self.pid, self.on_plan = started, pid, on_plan
        self.prep_s = self.prep_rss_mb = None
        self.hits = self.misses = 0
        self.tail = collections.deque(maxlen=300)  # under torchrun the worker's error is above a 40-line summary
        self.lock = threading.Lock()

    def read(self, stream):
        for line in stream:  # text mode: tqdm's \r refreshes arrive as lines of their own
            now = time.monotonic()
            with self.lock:
                if line.strip():
                    self.tail.append(line.rstrip())
                if PLAN in line and self.prep_s is None:
                    self.prep_s = now - self.started
                    self.prep_rss_mb = tree_peak_mb(self.pid)
                    self.on_plan()
                if HIT in line:
                    self.hits += 1
                elif MISS in line and not PROGRESS_BAR.search(line):
                    self.misses += 1


def run(n, kind, command, cwd, env, model, args, cache=None, stop_at_plan=False):
    """Runs command in a session of its own; returns its figures. stop_at_plan: SIGKILL the session as
    soon as the plan is printed (the old code has no --max_steps)."""
    remove_model(model)
    print(f"{kind}, {n} lines: {shlex.join(str(c) for c in command)}", file=sys.stderr)
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                            start_new_session=True)
    stopped = threading.Event()
    alive = threading.Lock()  # held while proc.pid may be reaped: no kill by pid after that
    reaped = False

    def stop():
        with alive:
            if not reaped:
                stopped.set()
                kill_tree(proc.pid)

    watch = Watch(started, proc.pid, stop if stop_at_plan else lambda: None)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    readers = [threading.Thread(target=watch.read, args=(stream,), daemon=True) for stream in (proc.stderr, proc.stdout)]
    for reader in readers:
        reader.start()
    timer = threading.Timer(args.timeout, stop)
    timer.start()
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped: its pid is still ours
        total_s = time.monotonic() - started
    except BaseException:
        kill_tree(proc.pid)
        proc.wait()
        raise
    finally:
        timer.cancel()
    sampler.stop()
    with alive:
        reaped = True
        _, status, usage = os.wait4(proc.pid, 0)  # not proc.wait(): wait4 gives the rusage of the process tree
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its session
    except (ProcessLookupError, PermissionError):
        pass
    for reader in readers:
        reader.join(timeout=10)
    result = {"lines": n, "run": kind, "command": command, "returncode": proc.returncode,
              "prep_s": watch.prep_s, "total_s": total_s, "prep_rss_mb": watch.prep_rss_mb,
              "peak_rss_mb": usage.ru_maxrss / 1024, "tree_rss_mb": sampler.rss_mb, "tree_pss_mb": sampler.pss_mb,
              "tokenizing_lines": watch.misses, "reusing_lines": watch.hits, "stopped_at_plan": False,
              "cache_mb": dir_mb(cache) if cache else None, "error": None}
    if stop_at_plan and watch.prep_s is not None:
        result["stopped_at_plan"] = True
    elif stopped.is_set():
        result["error"] = f"killed after --timeout {args.timeout:g} s"
    elif proc.returncode != 0:
        result["error"] = f"exit {proc.returncode}"
    elif watch.prep_s is None:
        result["error"] = f"no {PLAN!r} line"
    if result["error"]:
        print(f"  {kind}, {n} lines: FAILED ({result['error']}): {failure_note(watch.tail)}", file=sys.stderr)
        result["stderr_tail"] = list(watch.tail)[-80:]
    else:
        print(f"  prep {watch.prep_s:.1f} s, {fmt_mb(watch.prep_rss_mb)} MB at the plan, "
              f"tree RSS {sampler.rss_mb:.0f} MB (PSS {sampler.pss_mb:.0f}), peak RSS {result['peak_rss_mb']:.0f} MB, cache {cache_state(result)}, "
              f"total {total_s:.1f} s", file=sys.stderr)
    if not args.keep:
        remove_model(model)
    return result


def failure_note(tail):
    """One line: the last error message in the tail (under torchrun it sits above the agent's summary),
    else the tail's last lines."""
    errors = [line.strip() for line in tail if ERROR_LINE.search(line.strip()) and "ChildFailedError" not in line]
    return (errors[-1] if errors else " | ".join(list(tail)[-4:]))[-600:]


def descendants(pid):
    """pid and every live process below it (torchrun starts its workers in sessions of their own, so
    the process group does not hold them)."""
    children = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children[ppid].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children[found[-1]])
    return found


class TreeSampler(threading.Thread):
    """The largest sums of RSS and of PSS over a process and its descendants, sampled every 0.1 s."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.rss_mb, self.pss_mb = pid, 0.0, 0.0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.1):
            rss = pss = 0
            for member in descendants(self.pid):
                rss += proc_kb(f"/proc/{member}/status", "VmRSS:")
                pss += proc_kb(f"/proc/{member}/smaps_rollup", "Pss:")
            self.rss_mb, self.pss_mb = max(self.rss_mb, rss / 1024), max(self.pss_mb, pss / 1024)

    def stop(self):
        self.done.set()
        self.join()


def proc_kb(path, key):
    try:
        with open(path) as f:
            return next((int(line.split()[1]) for line in f if line.startswith(key)), 0)
    except (OSError, ValueError, IndexError):
        return 0


def tree_peak_mb(pid):
    """Largest VmHWM (peak RSS so far, of its own memory: not inherited at exec as ru_maxrss is) among
    pid and its live descendants."""
    peak = 0
    for member in descendants(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                peak = max([peak] + [int(line.split()[1]) for line in status if line.startswith("VmHWM:")])
        except (OSError, ValueError, IndexError):
            continue
    return peak / 1024 or None


def kill_tree(pid):
    for member in descendants(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def remove_model(model):
    """The model dir and what the trainers keep beside it (.<name>.partial, .<name>.lock)."""
    remove(model)
    for path in model.parent.glob(f".{model.name}.*"):
        remove(path)


def remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def dir_mb(path):
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# ---- git -----------------------------------------------------------------------------------------

def git(*args, cwd=ROOT):
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)


def baseline_worktree(path, ref):
    """A detached worktree of ref at path, created once; the main checkout is not touched."""
    want = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    if want.returncode:
        sys.exit(f"--baseline_ref {ref}: not a commit of {ROOT}")
    if not path.exists():
        made = git("worktree", "add", "--detach", str(path), ref)
        if made.returncode:
            sys.exit(f"git worktree add {path} {ref} failed:\n{made.stderr}")
    have = git("rev-parse", "HEAD", cwd=path).stdout.strip()
    if have != want.stdout.strip():
        sys.exit(f"{path} holds {have[:12] or 'no checkout'}, not {ref}: remove it "
                 f"(git -C {ROOT} worktree remove {path}) or choose another --workdir")
    return path


# ---- report --------------------------------------------------------------------------------------

def cache_state(result):
    hits, misses = result["reusing_lines"], result["tokenizing_lines"]
    if result["run"].startswith("torchrun"):
        return f"tokenizing x{misses}, reusing x{hits}"
    if hits and not misses:
        return "hit"
    if misses and not hits:
        return "miss"
    return f"? (tokenizing x{misses}, reusing x{hits})" if hits else "—"


def fmt_mb(mb):
    return f"{mb:.0f}" if mb else "?"


def report_rows(results):
    baselines = {r["lines"]: r for r in results if r["run"].startswith("baseline") and not r["error"]}
    rows = []
    for r in results:
        base = baselines.get(r["lines"]) if not r["run"].startswith("baseline") else None
        row = {"lines": f"{r['lines']:,}", "run": r["run"]}
        if r["error"]:
            rows.append({**row, "prep s": f"failed ({r['error']})"})
            continue
        row.update({
            "prep s": f"{r['prep_s']:.1f}",
            "vs baseline prep": f"{r['prep_s'] / base['prep_s']:.2f}x" if base else "—",
            "RSS at plan MB": fmt_mb(r["prep_rss_mb"]),
            "vs baseline RSS": (f"{r['prep_rss_mb'] / base['prep_rss_mb']:.2f}x"
                                if base and r["prep_rss_mb"] and base["prep_rss_mb"] else "—"),
            "tree RSS MB": fmt_mb(r.get("tree_rss_mb")), "tree PSS MB": fmt_mb(r.get("tree_pss_mb")),
            "peak RSS MB": f"{r['peak_rss_mb']:.0f}",
            "cache": cache_state(r),
            "cache MB": f"{r['cache_mb']:.0f}" if r["cache_mb"] is not None else "—",
            "total s": f"{r['total_s']:.1f}" + (" (killed at plan)" if r["stopped_at_plan"] else ""),
        })
        rows.append(row)
    return rows


def second_vs_first(results, trainer_names):
    ok = {(r["lines"], r["run"]): r for r in results if not r["error"]}
    lines = []
    for n in sorted({r["lines"] for r in results}):
        parts = []
        for trainer in trainer_names:
            first, second = ok.get((n, f"{trainer} first")), ok.get((n, f"{trainer} second"))
            parts.append(f"{trainer} {second['prep_s'] / first['prep_s']:.2f}x" if first and second
                         else f"{trainer} —")
        lines.append(f"{n:,} lines: second/first prep: " + ", ".join(parts))
    return lines


if __name__ == "__main__":
    main()
