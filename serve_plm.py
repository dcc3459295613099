"""Serve a fine-tuned model over HTTP: POST /predict (text-embeddings-inference's contract), a page to
try it at /, /info, /health, Prometheus /metrics and the OpenAPI page at /docs.

    python serve_plm.py --model_fn models/review                      # http://127.0.0.1:8000
    curl -s localhost:8000/predict -H 'Content-Type: application/json' -d '{"inputs": "Works perfectly."}'

Concurrent requests are batched: up to --max_batch_size texts, or what has arrived within --max_wait_ms,
go through the model together, sorted by length in passes of at most --max_batch_tokens, with the same
classifier (and the same labels and scores) as classify_plm.py on the same backend. It listens on 127.0.0.1 only: to reach it from other machines
pass --host 0.0.0.0 behind a firewall or a reverse proxy (there is no authentication). SIGTERM or
Ctrl-C stops taking connections, answers the requests in flight, then exits 0."""
import argparse
import errno
import logging
import signal
import socket

from inference.classifier import ClassifierOptions, add_classifier_flags
from inference.explain import Explainer, add_explain_flags, explain_options
from inference.load import load_classifier
from options.parser import ArgumentParser, float_range, int_at_least
from utils.errors import UserError, exit_on_user_error, require
from utils.log import log, route

# A batch that waits longer than this for company costs every client in it far more than sharing a forward
# pass saves; without a bound, 1e12 was accepted and held a busy server's requests for ever.
MAX_WAIT_MS = 1000


def parse_args():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # A gathered batch runs in length-sorted passes of at most 512 padded tokens: random texts padded into one
    # pass waste most of it on padding, and passes capped by tokens beat passes capped by count
    # (docs/benchmarks.md, "Figures behind the code"). On a GPU raise it (TEI's default: 16384).
    add_classifier_flags(p, batch_size=64, max_batch_tokens=512)
    server = p.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    server.add_argument("--port", type=int_at_least(0), default=8000, help="0: any free port (printed at start)")
    server.add_argument("--max_batch_size", type=int_at_least(1), default=64,
                        help="most texts gathered from concurrent requests into one batch (a request with more "
                             "runs alone); a batch runs in forward passes of --max_batch_tokens")
    server.add_argument("--max_wait_ms", type=float_range(0, MAX_WAIT_MS), default=5.0,
                        help="how long a batch waits for more requests before it runs, while the server is "
                             f"busy (the last batch was shared), at most {MAX_WAIT_MS:g}; a lone client is "
                             "answered at once")
    server.add_argument("--max_queue", type=int_at_least(1), default=1024,
                        help="texts that may wait for a batch; past it a request gets 503 with Retry-After")
    server.add_argument("--max_inputs", type=int_at_least(1), default=256, help="most texts in one request")
    server.add_argument("--max_chars", type=int_at_least(1), default=20000,
                        help="longest text (with its pair) in characters")
    server.add_argument("--access_log", action="store_true", help="log a line per request (uvicorn's access log)")
    add_explain_flags(p.add_argument_group('explain (a request with "explain": true; README: Explain)'), switch=False)
    args = p.parse_args()
    if args.port > 65535:
        p.error(f"argument --port: {args.port} is out of range; expected a port number from 0 to 65535")
    if args.max_inputs > args.max_queue:  # such a request could never be queued, busy or not
        p.error(f"argument --max_inputs: {args.max_inputs} is more than --max_queue {args.max_queue}; "
                "raise --max_queue or lower --max_inputs")
    return args


def main():
    args = parse_args()
    require(["fastapi", "uvicorn", "prometheus_client"], "serve_plm.py",
            "pip install -r requirements/serve.txt (make setup installs it)")
    import uvicorn

    from serving.app import create_app
    explain = explain_options(vars(args), args.backend, args.quantize, switch=False)  # a request's defaults
    classifier = load_classifier(ClassifierOptions.from_flags(vars(args)))
    explainer = Explainer(classifier, explain.method, explain.steps)
    sock = listen(args.host, args.port)
    app = create_app(classifier, args.max_batch_size, args.max_wait_ms, args.max_queue, args.max_inputs,
                     args.max_chars, explainer=explainer)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    log.info(f"serving {args.model_fn} ({classifier.backend}{' int8' * (args.quantize == 'int8')}, "
             f"{len(classifier.labels)} labels) at {url}  (page: {url}/  API: {url}/docs)")
    # uvicorn answers SIGTERM/SIGINT by finishing the requests in flight, then raises the signal again
    # with the handler it found: this one, so the process ends with exit code 0 rather than 143.
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped.append(number))
    route("uvicorn", logging.WARNING)  # uvicorn's own lines in the same form (its start-up notes are ours above)
    route("uvicorn.access", logging.INFO)
    config = uvicorn.Config(app, log_config=None, access_log=args.access_log, timeout_graceful_shutdown=30)
    if not stopped:  # a signal that came before uvicorn took the signals over: stop without serving
        uvicorn.Server(config).run(sockets=[sock])
    reason = signal.Signals(stopped[0]).name if stopped else "shutdown"
    log.info(f"stopped ({reason})")


def listen(host, port):
    """The listening socket, bound before the model is served so that a taken port is one line, not a
    traceback from inside the server."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        raise UserError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: {host}:{port} is in use (another server?): stop it, or choose "
                            "another --port (0: any free one)") from None
        raise UserError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None
    port = sock.getsockname()[1]
    twin = _other_loopback(host, family)
    if twin and _taken(twin, port):
        sock.close()
        raise UserError(f"--port {port}: {twin[1]}:{port} is in use (another server?), and clients of "
                        f"localhost:{port} reach either loopback address: stop it, or choose another --port")
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _other_loopback(host, family):
    """(family, address) of the loopback address of the other IP version, when `host` is a loopback address:
    127.0.0.1 and ::1 can each have a server on one port, and `localhost` reaches whichever it resolves to
    first, so a second server there would answer some of this one's clients."""
    import ipaddress
    try:
        if not ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host != "localhost":
            return None
    return (socket.AF_INET, "127.0.0.1") if family == socket.AF_INET6 else (socket.AF_INET6, "::1")


def _taken(twin, port):
    family, address = twin
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # no IPv6 here: nothing can listen there
        return False
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))
        return False
    except OSError as error:
        return error.errno == errno.EADDRINUSE
    finally:
        probe.close()


if __name__ == "__main__":
    exit_on_user_error(main)
