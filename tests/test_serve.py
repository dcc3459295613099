"""serve_plm.py: the /predict contract in-process (fast tier), then the real server over real HTTP, a
browser on its page, SIGTERM with a request in flight and the start-up errors (slow tier).

Models are tiny checkpoints written directly in the trainers' layout (test_onnx.tiny_checkpoint): the
server's contract does not depend on how well a model was trained."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT, SCRIPT_ENV, classifier_in_process, run_script
from test_bad_input import assert_clean_failure
from test_onnx import REVIEWS, tiny_checkpoint

pytest.importorskip("fastapi", reason="the server's packages: pip install -r requirements/serve.txt")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A single-label, a sentence-pair and a multi-label (per-label thresholds) tiny BERT."""
    root = tmp_path_factory.mktemp("serve")
    single = tiny_checkpoint(root / "single", "bert")
    pair = tiny_checkpoint(root / "pair", "bert", pairs=True)
    multi = tiny_checkpoint(root / "multi", "bert")
    config = json.loads((multi / "config.json").read_text())
    (multi / "config.json").write_text(json.dumps({**config, "problem_type": "multi_label_classification"}))
    args = json.loads((multi / "training_args.json").read_text())
    # label 0 (negative) never passes its threshold of 1.0, label 1 (positive) always passes its 0.0
    (multi / "training_args.json").write_text(json.dumps({**args, "threshold": [1.0, 0.0], "label_separator": "|"}))
    return {"single": single, "pair": pair, "multi": multi}


def client_for(model_fn, **limits):
    from fastapi.testclient import TestClient
    from serving.app import create_app
    classifier = classifier_in_process(model_fn, "--batch_size", 128, "--device", "cpu", "--precision", "fp32")
    return TestClient(create_app(classifier, **limits))


@pytest.fixture(scope="module")
def single(models):
    with client_for(models["single"], max_inputs=8, max_chars=200) as client:
        yield client


def same(a, b):
    """The same labels in the same order and marks, scores equal but for float noise (padding to another
    batch's length moves a score by ~1e-7)."""
    return ranked(a) == ranked(b) and [p["score"] for p in a] == pytest.approx([p["score"] for p in b], abs=1e-6)


def ranked(predictions):
    """Labels most probable first, and the marked ones."""
    return [p["label"] for p in predictions], [p["label"] for p in predictions if p["predicted"]]


def test_predict_one_text_a_list_and_a_batch(single):
    one = single.post("/predict", json={"inputs": REVIEWS[0]})
    assert one.status_code == 200
    predictions = one.json()
    assert {p["label"] for p in predictions} == {"negative", "positive"}
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5  # a softmax, highest first
    assert ranked(predictions)[1] == [predictions[0]["label"]]  # single-label: the top one is the prediction

    texts = single.post("/predict", json={"inputs": REVIEWS[:3]}).json()
    batch = single.post("/predict", json={"inputs": [[text] for text in REVIEWS[:3]]}).json()
    assert len(texts) == len(batch) == 3 and same(texts[0], predictions)
    assert all(same(a, b) for a, b in zip(texts, batch))

    raw = single.post("/predict", json={"inputs": REVIEWS[0], "raw_scores": True, "truncate": True}).json()
    assert ranked(raw) == ranked(predictions)
    import numpy as np
    logits = np.array([p["score"] for p in raw])
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert softmax == pytest.approx(scores, abs=1e-5)  # raw scores are the logits behind the probabilities


def test_info_health_metrics_page_docs(single, models):
    info = single.get("/info").json()
    assert info["model_fn"] == str(models["single"]) and info["labels"] == ["negative", "positive"]
    assert info["backend"] == "torch" and info["max_length"] == 64 and info["multi_label"] is False
    assert info["max_inputs"] == 8 and "torch" in info["versions"] and "onnxruntime" not in info["versions"]
    assert single.get("/health").json() == {"status": "ok"}
    metrics = single.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("finetune_plm_requests_total", "finetune_plm_batch_size_bucket", "finetune_plm_queue_length",
                 "finetune_plm_request_duration_seconds_bucket"):
        assert name in metrics.text
    page = single.get("/")
    assert page.status_code == 200 and "<textarea" in page.text and 'fetch("predict"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    assert "/predict" in single.get("/openapi.json").json()["paths"]
    assert single.get("/docs").status_code == 200


def test_pairs_as_text_embeddings_inference_reads_them(models):
    with client_for(models["pair"]) as client:
        one_pair = client.post("/predict", json={"inputs": [REVIEWS[0], REVIEWS[1]]}).json()
        assert isinstance(one_pair[0], dict)  # a list of two strings is one pair, as in TEI
        batch = client.post("/predict", json={"inputs": [[REVIEWS[0], REVIEWS[1]], [REVIEWS[2]]]}).json()
        assert len(batch) == 2 and same(batch[0], one_pair)
    with client_for(models["single"]) as client:
        refused = client.post("/predict", json={"inputs": [[REVIEWS[0], REVIEWS[1]]]})
        assert refused.status_code == 422 and "single sentences" in refused.json()["error"]


def test_multi_label_marks_labels_at_their_thresholds(models):
    with client_for(models["multi"]) as client:
        info = client.get("/info").json()
        assert info["multi_label"] is True and info["threshold"] == [1.0, 0.0]
        for predictions in client.post("/predict", json={"inputs": REVIEWS[:5]}).json():
            scores = [p["score"] for p in predictions]
            assert abs(sum(scores) - 1) > 1e-3  # a sigmoid per label, not a softmax
            assert ranked(predictions)[1] == ["positive"]  # per-label thresholds, applied by label


def test_forward_passes_by_token_budget(models):
    """length_batches: length-sorted passes within both caps; a classifier with a token budget gives the
    same logits as one without."""
    from inference.classifier import length_batches
    lengths = [5, 40, 7, 12, 40, 3, 90, 8]
    passes = list(length_batches(lengths, batch_size=3, max_tokens=80))
    assert sorted(i for batch in passes for i in batch) == list(range(len(lengths)))
    assert [[lengths[i] for i in batch] for batch in passes] == [[3, 5, 7], [8, 12], [40, 40], [90]]
    assert list(length_batches(lengths, batch_size=100)) == [sorted(range(8), key=lengths.__getitem__)]

    def logits(max_batch_tokens):
        flags = ["--batch_size", 64, "--device", "cpu", "--precision", "fp32"]
        if max_batch_tokens:
            flags += ["--max_batch_tokens", max_batch_tokens]
        return classifier_in_process(models["single"], *flags).logits([(text, None) for text in REVIEWS[:40]])
    assert logits(40) == pytest.approx(logits(None), abs=1e-5)


BAD_REQUESTS = [  # body, status, error_type, words in the message
    (b"{not json", 400, "invalid_json", "not JSON"),
    (b"\xff\xfe", 400, "invalid_json", "not JSON"),
    (json.dumps(["a list"]).encode(), 422, "validation", "JSON object"),
    (json.dumps({"text": "hello"}).encode(), 422, "validation", "unknown field 'text'"),
    (json.dumps({"raw_scores": True}).encode(), 422, "validation", "inputs is missing"),
    (json.dumps({"inputs": 5}).encode(), 422, "validation", "not int"),
    (json.dumps({"inputs": ["a", 5]}).encode(), 422, "validation", "inputs[1] must be a text like inputs[0]"),
    (json.dumps({"inputs": "hi", "raw_scores": "yes"}).encode(), 422, "validation", "raw_scores"),
    (json.dumps({"inputs": []}).encode(), 400, "empty", "empty list"),
    (json.dumps({"inputs": "   "}).encode(), 400, "empty", "inputs is empty"),
    (json.dumps({"inputs": ["fine", ""]}).encode(), 400, "empty", "inputs[1] is empty"),
    (json.dumps({"inputs": ["x"] * 9}).encode(), 413, "validation", "at most 8 (--max_inputs)"),
    (json.dumps({"inputs": "x" * 201}).encode(), 413, "validation", "at most 200 (--max_chars)"),
    (b'{"inputs": "a lone \\ud800 surrogate"}', 422, "validation", "unpaired surrogate"),  # a value, as README says
    (b"[" * 5000 + b"]" * 5000, 400, "invalid_json", "not JSON"),  # deeper than json.loads recurses
]


@pytest.mark.parametrize("body,status,error_type,words", BAD_REQUESTS)
def test_bad_requests_get_a_json_error_and_the_server_goes_on(single, capsys, body, status, error_type, words):
    capsys.readouterr()
    response = single.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert response.json()["error_type"] == error_type and words in response.json()["error"]
    logged = capsys.readouterr().err.splitlines()
    assert len(logged) == 1 and logged[0].startswith(f"warning: POST /predict {status} {error_type}: ")
    assert single.post("/predict", json={"inputs": "still serving"}).status_code == 200
    assert f'finetune_plm_errors_total{{error_type="{error_type}"}}' in single.get("/metrics").text


def test_routing_errors_have_the_error_shape_and_pairs_follow_classify_plm(single, models):
    """404 and 405 in the {error, error_type} shape of /predict's errors (uvicorn's own 400, for bytes that are
    not HTTP, never reaches the app: README). A pair model classifies ["", "pair"] as classify_plm.py classifies
    the line "<TAB>pair", and reads ["text", ""] as a single text; nothing in either part is empty."""
    missing = single.get("/nothing")
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"
    assert missing.json()["error"].startswith("GET /nothing: Not Found; the endpoints are POST /predict")
    wrong = single.get("/predict")
    assert wrong.status_code == 405 and wrong.json()["error_type"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"
    with client_for(models["pair"]) as client:
        for inputs in ([["", "a pair"]], [["a text", ""]], ["", "a pair"]):
            assert client.post("/predict", json={"inputs": inputs}).status_code == 200, inputs
        empty = client.post("/predict", json={"inputs": [["fine", "pair"], ["", " "]]})
        assert empty.status_code == 400 and empty.json() == {"error": "inputs[1] is empty: send text to classify",
                                                             "error_type": "empty"}


def test_a_stalled_or_abandoned_body_is_answered_and_counted(models):
    """A client that stops sending mid-body gets 408 (it was held for ever, and at SIGTERM's drain got a
    text/plain 500); one that hangs up mid-body is counted under requests_total as 499. The app is called
    as uvicorn calls it, with a body that stalls after its first bytes (a 0.2 s timeout here, 10 s served)."""
    import asyncio
    from fastapi.testclient import TestClient
    from serving.app import create_app
    app = create_app(client_for(models["single"]).app.state.batcher.classifier, body_timeout_s=0.2)

    def post(then):
        sent, first = [], [True]

        async def receive():
            if first.pop() if first else False:
                return {"type": "http.request", "body": b'{"inputs": "hal', "more_body": True}
            return await then()

        async def send(message):
            sent.append(message)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", b"30")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
        asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    async def stall():
        await asyncio.sleep(3600)

    async def hang_up():
        return {"type": "http.disconnect"}
    status, body = post(stall)
    assert status == 408 and json.loads(body) == {
        "error": "the body did not arrive within 0.2 s (15 bytes came): send it whole", "error_type": "timeout"}
    assert post(hang_up)[0] == 499
    with TestClient(app) as client:
        text = client.get("/metrics").text
    assert metric(text, 'finetune_plm_requests_total{status="408"}') == 1
    assert metric(text, 'finetune_plm_requests_total{status="499"}') == 1
    assert metric(text, 'finetune_plm_errors_total{error_type="disconnected"}') == 1


def test_a_failing_request_does_not_fail_the_requests_batched_with_it(models):
    """The model fails on one request's text (a stand-in failure wrapped around the real classifier): the
    batch is run again request by request, and only that request gets the 500."""
    with client_for(models["single"], max_wait_ms=1000) as client:
        classifier = client.app.state.batcher.classifier
        real_predict = classifier.predict
        # a batch of 3 texts: the next batch waits for 3 (a new server's first request runs alone, at once)
        assert client.post("/predict", json={"inputs": ["one", "two", "three"]}).status_code == 200

        def predict(items, *args, **kwargs):
            if any("BOOM" in text for text, _ in items):
                raise ValueError("cannot classify BOOM")
            return real_predict(items, *args, **kwargs)
        classifier.predict = predict
        with ThreadPoolExecutor(2) as pool:
            good = pool.submit(client.post, "/predict", json={"inputs": ["fine", "also fine"]})
            bad = pool.submit(client.post, "/predict", json={"inputs": "BOOM"})
            good, bad = good.result(timeout=60), bad.result(timeout=60)
        assert good.status_code == 200 and len(good.json()) == 2
        assert bad.status_code == 500 and bad.json()["error_type"] == "backend"
        assert metric(client.get("/metrics").text, "finetune_plm_batch_size_count") == 2  # they shared a batch


def test_a_new_servers_first_lone_request_is_answered_at_once(models, monkeypatch, capsys):
    """It waited all of --max_wait_ms (the batcher expected a full batch); and the wait has a bound."""
    import serve_plm
    with client_for(models["single"], max_wait_ms=1000) as client:
        started = time.perf_counter()
        assert client.post("/predict", json={"inputs": "alone"}).status_code == 200
        assert time.perf_counter() - started < 0.5
    monkeypatch.setattr(sys, "argv", ["serve_plm.py", "--model_fn", "m", "--max_wait_ms", "1e12"])
    with pytest.raises(SystemExit) as stopped:
        serve_plm.parse_args()
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        "error: argument --max_wait_ms: 1e12 is out of range; expected a number at least 0 and at most 1000 "
        "(see --help)\n")


def test_a_full_queue_answers_503_with_retry_after(models):
    """The model is held busy (its one worker thread blocked), so requests pile up in the queue."""
    with client_for(models["single"], max_queue=4, max_wait_ms=0) as client:
        batcher = client.app.state.batcher
        release = threading.Event()
        batcher.executor.submit(release.wait)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/predict", json={"inputs": ["one", "two", "three"]})
            # the first request is gathered into a batch, which waits for the worker
            wait_until(lambda: metric(client.get("/metrics").text, "finetune_plm_batch_size_count") == 1)
            second = pool.submit(client.post, "/predict", json={"inputs": ["four", "five", "six"]})
            wait_until(lambda: batcher.queued_texts == 3)
            refused = client.post("/predict", json={"inputs": ["seven", "eight"]})
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error_type"] == "overloaded"
            release.set()
            assert first.result(timeout=30).status_code == 200 and second.result(timeout=30).status_code == 200
        assert client.post("/predict", json={"inputs": ["seven", "eight"]}).status_code == 200


def wait_until(condition, timeout=30):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


# --- the real server, over real HTTP -------------------------------------------------------------

class Server:
    """serve_plm.py in a subprocess on a free port, as a user starts it."""

    def __init__(self, model_fn, *flags):
        self.process = subprocess.Popen([sys.executable, str(ROOT / "serve_plm.py"), "--model_fn", str(model_fn),
                                         "--port", "0", *map(str, flags)], cwd=ROOT, env=SCRIPT_ENV,
                                        stderr=subprocess.PIPE, text=True)
        first = self.process.stderr.readline()
        match = re.search(r"at (http://[\d.]+:\d+)", first)
        assert match, first + self.process.stderr.read()
        self.url = match.group(1)

    def post(self, inputs, timeout=60, **fields):
        return http("POST", self.url + "/predict", {"inputs": inputs, **fields}, timeout)

    def get(self, path):
        return http("GET", self.url + path)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        return code, self.process.stderr.read()


def http(method, url, body=None, timeout=60):
    """(status, headers, decoded body) with the standard library only."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, headers, content = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, content = error.code, error.headers, error.read()
    text = content.decode()
    return status, headers, json.loads(text) if headers.get("content-type", "").startswith("application/json") else text


def metric(text, name):
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """The single-label model with its ONNX export, for the onnx backend."""
    model_fn = tmp_path_factory.mktemp("served") / "m"
    shutil.copytree(models["single"], model_fn)
    run_script("export_plm.py", "--model_fn", model_fn)
    return model_fn


@pytest.mark.slow  # starts the real server
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_same_labels_and_scores_as_classify_plm(exported, backend):
    """Every text, sent alone by 16 concurrent clients (so batches mix them), gets the label and score
    classify_plm.py prints for it with the same backend."""
    texts = REVIEWS[:60]
    printed = run_script("classify_plm.py", "--model_fn", exported, "--backend", backend, "--with_prob",
                         stdin="\n".join(texts) + "\n").stdout.splitlines()
    server = Server(exported, "--backend", backend, "--max_wait_ms", 20)
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda text: server.post(text), texts))
        assert all(status == 200 for status, _, _ in answers)
        for line, (_, _, predictions) in zip(printed, answers):
            label, probability, text = line.split("\t")
            assert predictions[0]["label"] == label and predictions[0]["predicted"]
            assert abs(predictions[0]["score"] - float(probability)) <= 5.1e-5  # printed to 4 decimals
        _, _, metrics = server.get("/metrics")
        # concurrent requests shared forward passes: fewer batches than requests
        assert metric(metrics, "finetune_plm_batch_size_count") < len(texts)
        assert metric(metrics, "finetune_plm_batch_size_sum") == len(texts)
        assert server.get("/info")[2]["backend"] == backend
    finally:
        code, stderr = server.stop()
    assert code == 0 and "Traceback" not in stderr


@pytest.mark.slow  # starts the real server
def test_sigterm_answers_the_request_in_flight_then_exits_0(models):
    """After a batch of 3 texts, a 1-text request waits up to 1 s for 2 more (--max_wait_ms 1000), so SIGTERM
    lands while it is in flight."""
    server = Server(models["single"], "--max_wait_ms", 1000)
    assert server.post(REVIEWS[:3])[0] == 200
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(server.post, REVIEWS[3])
        wait_until(lambda: metric(server.get("/metrics")[2], "finetune_plm_queue_length") == 1)
        server.process.send_signal(signal.SIGTERM)
        status, _, predictions = answer.result(timeout=60)
    code, stderr = server.stop()
    assert status == 200 and len(predictions) == 2  # the labels of the one text
    assert code == 0 and "stopped (SIGTERM)" in stderr and "Traceback" not in stderr


@pytest.mark.slow  # starts the real server
def test_start_up_errors_are_one_line(models, exported, tmp_path):
    """On the onnx backend, which starts in half a second (the model checks are the ones classify_plm.py
    runs on either backend: tests/test_bad_input.py, tests/test_onnx.py)."""
    onnx = ("--backend", "onnx", "--port", "0")
    result = run_script("serve_plm.py", "--model_fn", tmp_path / "nothing", *onnx, check=False)
    assert_clean_failure(result, "no such model directory")
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "config.json").write_text("{ cut sh")
    result = run_script("serve_plm.py", "--model_fn", broken, *onnx, check=False)
    assert_clean_failure(result, "config.json: cannot read it as JSON")
    result = run_script("serve_plm.py", "--model_fn", models["single"], "--backend", "onnx", "--port", "0",
                        check=False)
    assert_clean_failure(result, "no model.onnx", "export_plm.py")
    result = run_script("serve_plm.py", "--model_fn", models["single"], "--port", "70000", check=False)
    assert_clean_failure(result, "--port")
    result = run_script("serve_plm.py", "--model_fn", models["single"], "--max_inputs", "10", "--max_queue", "5",
                        check=False)
    assert_clean_failure(result, "--max_inputs", "--max_queue")
    server = Server(exported, "--backend", "onnx")
    try:
        port = server.url.rsplit(":", 1)[1]
        result = run_script("serve_plm.py", "--model_fn", exported, "--backend", "onnx", "--port", port, check=False)
        assert_clean_failure(result, f"--port {port}", "in use")
    finally:
        server.stop()


def chromium_path():
    for path in ("/usr/bin/chromium", "/usr/lib/chromium/chromium", shutil.which("chromium") or ""):
        if path and os.path.exists(path):
            return path
    return None


def check_explain_switch(page, server, lines):
    """With Explain on, each line is shown again under its predicted label, every word of it coloured by the
    attribution /predict gives it: green towards the label, red against it, the strongest the most opaque."""
    page.fill("#inputs", "\n".join(lines))
    page.check("#explain")
    page.click("#classify")
    page.wait_for_selector(".result >> nth=1 >> .why")
    assert page.is_visible("#legend")
    answers = server.post(lines, explain=True)[2]
    for result, line, answer in zip(page.query_selector_all(".result"), lines, answers):
        [why] = result.query_selector_all(".why")  # one predicted label, one explanation
        assert why.get_attribute("data-label") == "positive" and why.text_content() == "why positive:" + line
        words = next(p["words"] for p in answer if p["predicted"])
        spans = why.query_selector_all(".word")
        assert [span.text_content() for span in spans] == [word for word, _ in words]
        shown = []
        for span in spans:
            colour = span.evaluate("e => getComputedStyle(e).backgroundColor")
            r, g, b, alpha = (float(x) for x in re.match(r"rgba?\(([\d.]+), ([\d.]+), ([\d.]+)(?:, ([\d.]+))?\)",
                                                         colour).groups(default="1"))
            attribution = float(span.get_attribute("data-attribution"))
            assert (g > r) if attribution > 0 else (r > g) if attribution < 0 else alpha == 0
            shown.append((abs(attribution), alpha))
        assert max(shown)[1] == pytest.approx(0.85, abs=0.01)  # the strongest word the most opaque
        assert any(a > 0 for a, _ in shown)


@pytest.mark.slow  # starts the real server and a browser
def test_the_page_in_a_real_browser(models):
    """Chromium types two lines into the page, clicks Classify and reads the predicted labels off the bars;
    they are the ones /predict gives."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Chromium for the browser test: apt-get install chromium (.ci/run does)")
        pytest.skip("no Chromium here: apt-get install chromium")
    lines = [REVIEWS[0], REVIEWS[5]]
    server = Server(models["multi"])
    try:
        expected = [ranked(p) for p in server.post(lines)[2]]
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('info').textContent.includes('2 labels')")
            assert "multi-label" in page.text_content("#info")
            page.fill("#inputs", "\n".join(lines))
            page.click("#classify")
            page.wait_for_selector(".result >> nth=1")
            results = page.query_selector_all(".result")
            seen = []
            for result in results:
                bars = result.query_selector_all(".bar")
                seen.append(([bar.get_attribute("data-label") for bar in bars],
                             [bar.get_attribute("data-label") for bar in result.query_selector_all(".bar.predicted")]))
                widths = [bar.query_selector(".fill").evaluate("e => e.getBoundingClientRect().width") for bar in bars]
                assert widths[0] > 0
            assert [r.query_selector(".text").text_content() for r in results] == lines
            assert seen == expected and all(predicted == ["positive"] for _, predicted in seen)
            page.fill("#inputs", "   ")
            page.click("#classify")
            assert page.text_content("#error") == "Type a text first."
            check_explain_switch(page, server, lines)
            browser.close()
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr


def test_a_port_served_on_the_other_loopback_address_is_refused():
    """127.0.0.1 and ::1 could serve one port at once, and `localhost` clients reached either server: a server on
    one loopback address now refuses a port the other one has, in one line (in process: serve_plm.listen)."""
    import socket
    import serve_plm
    from utils.errors import UserError
    try:
        other = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        other.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    other.listen()
    port = other.getsockname()[1]
    try:
        with pytest.raises(UserError, match=rf"^--port {port}: ::1:{port} is in use \(another server\?\), and clients "
                                            rf"of localhost:{port} reach either loopback address"):
            serve_plm.listen("127.0.0.1", port)
        serve_plm.listen("127.0.0.1", 0).close()  # a free port on both is served as before
    finally:
        other.close()
