"""Peak memory of classify_plm.py on a very long input, against the same process on one line.

    python bench/classify_memory.py --model_fn models/review              # 1,000,000 lines
    python bench/classify_memory.py --model_fn models/review --n_lines 100000
    python bench/classify_memory.py --model_fn models/review --backend onnx    # after export_plm.py

Lines are generated (emotion validation sentences, repeated) and piped in while the process runs,
so the input never sits in a file or in this process. The peak resident set size of the
classifier is sampled every 50 ms; the baseline is the peak of the same command on a one-line input
(the model, the libraries and one batch). The difference is what the input length costs."""
import argparse
import subprocess
import sys
import threading
import time

import psutil
from common import ROOT, emotion


def peak_rss(model_fn, lines, n_lines, extra):
    process = subprocess.Popen([sys.executable, str(ROOT / "classify_plm.py"), "--model_fn", model_fn, *extra],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    feeder = threading.Thread(target=feed, args=(process.stdin, lines, n_lines), daemon=True)
    feeder.start()
    handle, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, handle.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    summary = process.stderr.read().decode().strip().splitlines()[-1]
    return peak / 2**20, summary


def feed(stdin, lines, n_lines):
    block = ("\n".join(lines) + "\n").encode()
    written = 0
    while written + len(lines) <= n_lines:
        stdin.write(block)
        written += len(lines)
    stdin.write(("\n".join(lines[:n_lines - written]) + "\n").encode() if n_lines > written else b"")
    stdin.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_fn", required=True)
    p.add_argument("--n_lines", type=int, default=1_000_000)
    p.add_argument("--quantize", choices=["none", "int8"], default="none")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    args = p.parse_args()
    lines = [text for _, text in emotion("val")]
    extra = ["--quantize", args.quantize, "--backend", args.backend]
    base, _ = peak_rss(args.model_fn, lines, 1, extra)
    peak, summary = peak_rss(args.model_fn, lines, args.n_lines, extra)
    print(f"one line: peak RSS {base:.0f} MiB\n{args.n_lines:,} lines: peak RSS {peak:.0f} MiB "
          f"(+{peak - base:.0f} MiB)\n{summary}")


if __name__ == "__main__":
    main()
