"""Data and helpers the benchmarks share: corpus samples from ../shared/data, tables, machine info."""
import os
import platform
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "docs" / "accuracy.json"  # every accuracy study's results; bench/accuracy.py renders docs/accuracy.md
sys.path.insert(0, str(ROOT))


def emotion(split, n=None, seed=0):
    """(label, text) rows of the emotion corpus (`text;label`, header, split on the last `;`)."""
    lines = (SHARED_DATA / "emotion" / f"{split}.txt").read_text(encoding="utf-8").splitlines()[1:]
    rows = [(line.rsplit(";", 1)[1], line.rsplit(";", 1)[0]) for line in lines]
    return sample(rows, n, seed)


def nsmc(split, n=None, seed=0):
    """(label, text) rows of NSMC (`id<TAB>document<TAB>label`, header; empty documents dropped)."""
    lines = (SHARED_DATA / "nsmc" / f"ratings_{split}.txt").read_text(encoding="utf-8").splitlines()[1:]
    rows = [(fields[2], fields[1]) for fields in (line.split("\t") for line in lines) if fields[1].strip()]
    return sample(rows, n, seed)


DATASETS = {"emotion": emotion, "nsmc": nsmc}


def sample(rows, n, seed):
    if n is None or n >= len(rows):
        return rows
    return random.Random(seed).sample(rows, n)


def write_tsv(path, rows):
    Path(path).write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return Path(path)


def require_shared():
    if not SHARED_DATA.is_dir():
        sys.exit(f"benchmarks need the corpora in {SHARED_DATA}")


def median(values):
    return statistics.median(values)


def table(rows, columns):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) + " |" for r in rows]
    return "\n".join(lines)


def machine():
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"{gpu}")


SECTION = re.compile(r"<!-- section: (?P<name>[\w-]+) -->\n.*?<!-- end of section: (?P=name) -->\n", re.S)


def write_section(path, name, text):
    """Put one bench's section into a markdown report (docs/accuracy.md) between markers, replacing its earlier
    version and leaving the rest as it is; bench/accuracy.py keeps such sections when it rewrites the report."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    section = f"<!-- section: {name} -->\n{text.rstrip()}\n<!-- end of section: {name} -->\n"
    pattern = re.compile(rf"<!-- section: {name} -->\n.*?<!-- end of section: {name} -->\n", re.S)
    new = pattern.sub(lambda _: section, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    path.write_text(new, encoding="utf-8")


def kept_sections(path):
    """The marked sections (write_section) of a report, to carry over when the rest is written anew."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return "".join("\n" + match.group(0) for match in SECTION.finditer(text))


def git_commit():
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    # docs/ does not count: this report itself rewrites docs/accuracy.json as it goes
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def save_result(name, result):
    """One study's result into docs/accuracy.json, beside the others'."""
    import json
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[name] = result
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
