"""Load on serve_plm.py: sentences/s and latency under concurrent clients, with and without batching,
against classify_plm.py's marginal speed on the same backend, in the same run.

    python bench/serve_load.py                               # torch fp32 and onnx int8, 1/8/32/128 clients
    python bench/serve_load.py --systems "onnx int8" --clients 1 32 --n_sentences 500

A model is fine-tuned on emotion first (or reused with --model_fn) and exported. For each system the
server is started as a user starts it, twice: batching as shipped (--max_batch_size 64 --max_wait_ms 5,
forward passes of at most --max_batch_tokens 512) and unbatched (--max_batch_size 1). Each time, --n_sentences emotion validation sentences are sent one
per request by N concurrent clients (keep-alive connections, a minimal asyncio HTTP client in this
process: client and server share the machine's cores). Reported: sentences/s, p50/p99 latency, the
ratio to classify_plm.py's marginal speed (its own `classified N sentences in S s`, model load
excluded) and to the unbatched server, the mean batch size (from /metrics), the agreement of the
served labels with classify_plm.py's, and the start-up: seconds from launch to the first healthy /health."""
import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import ROOT, emotion, machine, median, require_shared, table, write_tsv

SYSTEMS = {"torch fp32": [], "torch int8": ["--quantize", "int8"], "onnx fp32": ["--backend", "onnx"],
           "onnx int8": ["--backend", "onnx", "--quantize", "int8"]}
BATCHED = ["--max_batch_size", "64", "--max_wait_ms", "5", "--batch_size", "64", "--max_batch_tokens", "512"]  # defaults
UNBATCHED = ["--max_batch_size", "1", "--max_wait_ms", "0"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="+", default=["torch fp32", "onnx int8"], choices=list(SYSTEMS))
    p.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32, 128])
    p.add_argument("--n_sentences", type=int, default=2000)
    p.add_argument("--n_train", type=int, default=4000, help="emotion lines to fine-tune the benchmark model on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model_fn", help="reuse this model (exported) instead of fine-tuning one")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds, each classify_plm.py then every server and client count; medians reported, the "
                        "ratios taken within a round (this machine's speed drifts by up to 1.4x between minutes)")
    args = p.parse_args()
    require_shared()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    print(f"machine: {machine()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        model_fn = Path(args.model_fn or Path(tmp) / "emotion")
        if not model_fn.exists():
            train_fn = write_tsv(Path(tmp) / "train.tsv", emotion("train", args.n_train, seed=2))
            print(f"fine-tuning {model_fn} on {args.n_train} emotion lines ...", file=sys.stderr)
            subprocess.run([sys.executable, str(ROOT / "finetune_plm_native.py"), "--model_fn", str(model_fn),
                            "--train_fn", str(train_fn), "--n_epochs", "2"], check=True, env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL)
        if not (model_fn / "model.int8.onnx").exists():
            subprocess.run([sys.executable, str(ROOT / "export_plm.py"), "--model_fn", str(model_fn)], check=True,
                           env=env, cwd=ROOT, stdout=sys.stderr)
        texts = [text.replace("\t", " ") for _, text in emotion("val", args.n_sentences, seed=3)]
        rows = []
        for system in args.systems:
            rows += measure(system, model_fn, texts, args.clients, args.repeats, env)
        print(f"\n{len(texts)} emotion validation sentences, one per request; {args.threads} threads for the model")
        print(table(rows, ["system", "server", "clients", "sentences/s", "p50 ms", "p99 ms", "vs classify_plm",
                           "vs unbatched", "mean batch", "agreement", "start-up s"]))


def measure(system, model_fn, texts, client_counts, repeats, env):
    """The table's rows of one system: classify_plm.py's rate, then both servers at each client count, `repeats`
    rounds taking turns; each figure the median over the rounds, each ratio the median of the rounds' ratios."""
    servers = {}
    try:
        for name, flags in (("unbatched", UNBATCHED), ("batched", BATCHED)):
            servers[name] = Server(model_fn, SYSTEMS[system] + flags, env)
        rates, runs = [], {}
        for _ in range(repeats):
            rate, labels = classify_rate(model_fn, SYSTEMS[system], texts, env)
            rates.append(rate)
            print(f"{system}: classify_plm.py {rate:.1f} sentences/s", file=sys.stderr)
            for name, server in servers.items():
                for clients in client_counts:
                    before = server.batches()
                    result = asyncio.run(load(server.port, texts, clients))
                    after = server.batches()
                    served = len(texts) / result["seconds"]
                    print(f"{system} {name} {clients} clients: {served:.1f} sentences/s, p99 "
                          f"{result['p99'] * 1000:.1f} ms", file=sys.stderr)
                    runs.setdefault((name, clients), []).append({
                        "served": served, "vs classify": served / rate, "p50": result["p50"], "p99": result["p99"],
                        "batch": (after[1] - before[1]) / max(after[0] - before[0], 1),
                        "agree": sum(a == b for a, b in zip(result["labels"], labels)) / len(labels)})
    finally:
        for server in servers.values():
            server.stop()
    rows = [{"system": system, "server": "classify_plm.py (stdin)", "clients": "",
             "sentences/s": f"{median(rates):.1f}"}]
    for (name, clients), rounds in runs.items():
        unbatched = runs[("unbatched", clients)]
        rows.append({
            "system": system, "server": f"serve_plm.py {name}", "clients": clients,
            "sentences/s": f"{median(r['served'] for r in rounds):.1f}",
            "p50 ms": f"{median(r['p50'] for r in rounds) * 1000:.1f}",
            "p99 ms": f"{median(r['p99'] for r in rounds) * 1000:.1f}",
            "vs classify_plm": f"{median(r['vs classify'] for r in rounds):.2f}x",
            "vs unbatched": (f"{median(r['served'] / u['served'] for r, u in zip(rounds, unbatched)):.2f}x"
                             if name == "batched" else ""),
            "mean batch": f"{median(r['batch'] for r in rounds):.1f}",
            "agreement": f"{min(r['agree'] for r in rounds):.2%}",
            "start-up s": f"{servers[name].startup:.2f}" if clients == client_counts[0] else ""})
    return rows


def classify_rate(model_fn, flags, texts, env):
    """classify_plm.py's marginal sentences/s (its summary line, model load excluded) and its labels."""
    result = subprocess.run([sys.executable, str(ROOT / "classify_plm.py"), "--model_fn", str(model_fn), *flags],
                            input="\n".join(texts) + "\n", capture_output=True, text=True, env=env, cwd=ROOT,
                            check=True)
    summary = [line for line in result.stderr.splitlines() if line.startswith("classified")][-1]
    seconds = float(summary.split(" in ")[1].split(" s")[0])
    return len(texts) / seconds, [line.split("\t")[0] for line in result.stdout.splitlines()]


class Server:
    def __init__(self, model_fn, flags, env):
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, str(ROOT / "serve_plm.py"), "--model_fn", str(model_fn),
                                         "--port", "0", *flags], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        line = self.process.stderr.readline()
        self.port = int(re.search(r"at http://[\d.]+:(\d+)", line).group(1))
        while True:  # the socket is bound before the line; /health answers once the app has started
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.01)
        self.startup = time.perf_counter() - started

    def batches(self):
        """(forward passes, texts) so far, from /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics") as response:
            text = response.read().decode()
        count = float(re.search(r"^finetune_plm_batch_size_count (\S+)$", text, re.M).group(1))
        total = float(re.search(r"^finetune_plm_batch_size_sum (\S+)$", text, re.M).group(1))
        return count, total

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


async def load(port, texts, clients):
    """Send every text once, one per request, from `clients` keep-alive connections at once."""
    requests = []  # encoded before the clock starts: the client's own work is kept small
    for text in texts:
        body = json.dumps({"inputs": text}).encode()
        requests.append(b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    queue = iter(enumerate(requests))
    labels, latencies = [None] * len(texts), []

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i, request in queue:
            started = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            answer = json.loads(await reader.readexactly(length))
            latencies.append(time.perf_counter() - started)
            if not status.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{status.decode().strip()}: {answer}")
            labels[i] = answer[0]["label"]
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - started
    latencies.sort()
    return {"seconds": seconds, "labels": labels, "p50": latencies[len(latencies) // 2],
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


if __name__ == "__main__":
    main()
