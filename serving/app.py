"""The HTTP service: FastAPI routes over one classifier and its batcher.

  POST /predict   text-embeddings-inference's request and response (serving/requests.py)
  GET  /info      the model (its saved record), backend, limits, versions
  GET  /health    200 while the batcher runs
  GET  /metrics   Prometheus text format
  GET  /          a page to try the model (serving/page.html)
  GET  /docs      FastAPI's OpenAPI page
Errors are JSON, {"error": "...", "error_type": "..."}, with one log line each."""
import asyncio
import json
import platform
import time
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from serving.batcher import Batcher, Overloaded
from serving.metrics import Metrics
from serving.requests import REQUEST_SCHEMA, RESPONSE_SCHEMA, BadRequest, parse_predict, predictions
from utils.errors import first_line
from utils.log import log

PAGE = Path(__file__).with_name("page.html")
RETRY_AFTER_S = 1  # a full queue drains in well under a second at the measured rates (docs/benchmarks.md)
# A client that stops sending in the middle of its body holds a connection and a request slot: it gets 408
# after this long (uvicorn times out idle connections between requests, not a body that never ends), within
# the 30 s that SIGTERM's drain waits for requests in flight (serve_plm.py).
BODY_TIMEOUT_S = 10
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection before the answer


def create_app(classifier, max_batch_size=64, max_wait_ms=5.0, max_queue=1024, max_inputs=256, max_chars=20000,
               body_timeout_s=BODY_TIMEOUT_S, explainer=None):
    """explainer: inference.explain.Explainer for {"explain": true} (None: built here with its defaults)."""
    if explainer is None:
        from inference.explain import Explainer
        explainer = Explainer(classifier)
    metrics = Metrics()
    batcher = Batcher(classifier, max_batch_size, max_wait_ms, max_queue, metrics)
    limits = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "max_queue": max_queue,
              "max_inputs": max_inputs, "max_chars": max_chars}
    info = {**classifier.saved.describe(), "backend": classifier.backend, "quantize": classifier.quantize,
            "max_length": classifier.max_length, "trained_max_length": classifier.saved.max_length,
            # texts longer than max_length, as this server runs them (--long_text, default as trained)
            "long_text": classifier.long_text, "stride": classifier.stride, "window_pooling": classifier.window_pooling,
            **({"device": str(classifier.device), "precision": classifier.precision}
               if classifier.backend == "torch" else {}),
            **limits, "versions": versions(classifier.backend),
            "explain": {"method": explainer.method, "methods": list(explainer.methods), "steps": explainer.steps}}
    # A body holds at most max_inputs texts of max_chars (pairs twice), 4 bytes a character in UTF-8.
    max_body = max_inputs * 2 * max_chars * 4 + 65536
    page = PAGE.read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="finetune-plm", lifespan=lifespan,
                  description=f"Classify text with {classifier.saved.path} ({', '.join(classifier.labels[:8])}"
                              f"{', ...' if len(classifier.labels) > 8 else ''}). POST /predict as "
                              "text-embeddings-inference's /predict.")

    app.state.batcher = batcher

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error):
        """404, 405 (and any other error the routing answers) in the {error, error_type} shape /predict uses."""
        error_type = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http")
        message = (f"{request.method} {request.url.path}: {error.detail}"
                   + ("; the endpoints are POST /predict, GET /info, /health, /metrics, / and /docs"
                      if error.status_code in (404, 405) else ""))
        return json_response({"error": message, "error_type": error_type}, error.status_code,
                             getattr(error, "headers", None))

    def refuse(status, error_type, message, headers=None):
        metrics.requests.labels(str(status)).inc()
        metrics.errors.labels(error_type).inc()
        log.warning(f"POST /predict {status} {error_type}: {message}")
        return json_response({"error": message, "error_type": error_type}, status, headers)

    @app.post("/predict", openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}},
        "responses": {"200": {"description": "each input's labels, most probable first",
                              "content": {"application/json": {"schema": RESPONSE_SCHEMA}}},
                      "4XX": {"description": "{error, error_type}"}, "503": {"description": "queue full"}}})
    async def predict(request: Request):
        started = time.perf_counter()
        try:
            body = await read_body(request, max_body, body_timeout_s)
            parsed = parse_predict(body, classifier.pairs, max_inputs, max_chars)
            method = explainer.method if parsed.explain is True else parsed.explain
            if method and method not in explainer.methods:
                raise BadRequest(422, "validation", f"explain: {method} is not possible on this server's backend "
                                                    f"({classifier.backend}); it explains by "
                                                    f"{', '.join(explainer.methods)}")
            prediction = await batcher.predict(parsed.items)
            words = None
            if method:  # in the model's one worker thread, after the batch that classified them
                words = await asyncio.get_running_loop().run_in_executor(
                    batcher.executor, explainer.explain_pairs, parsed.items, prediction.label_ids, method)
        except BadRequest as error:
            return refuse(error.status, error.error_type, str(error))
        except Overloaded as error:
            return refuse(503, "overloaded", f"the server is busy: {error}; retry in {RETRY_AFTER_S} s",
                          {"Retry-After": str(RETRY_AFTER_S)})
        except ClientDisconnect:  # the client left while sending: nobody to answer; counted as nginx counts it
            metrics.requests.labels(str(CLIENT_CLOSED)).inc()
            metrics.errors.labels("disconnected").inc()
            return Response(status_code=CLIENT_CLOSED)
        except Exception as error:  # the backend failed on this request; the server goes on
            log.error(f"POST /predict 500 backend: {type(error).__name__}: {first_line(error)}")
            metrics.requests.labels("500").inc()
            metrics.errors.labels("backend").inc()
            return json_response({"error": f"the model failed on this batch: {error}", "error_type": "backend"}, 500)
        values = prediction.logits if parsed.raw_scores else prediction.probabilities
        results = [predictions(classifier.labels, values[i], prediction.probabilities[i], prediction.label_ids[i],
                               words[i] if words is not None else None)
                   for i in range(len(parsed.items))]
        metrics.inputs.inc(len(parsed.items))
        metrics.requests.labels("200").inc()
        metrics.latency.observe(time.perf_counter() - started)
        return json_response(results if parsed.batch else results[0])

    @app.get("/info")
    async def model_info():
        return info

    @app.get("/health")
    async def health():
        if not batcher.healthy:
            return json_response({"error": "the batcher has stopped", "error_type": "unhealthy"}, 503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def try_page():
        return page

    return app


async def read_body(request, limit, timeout=BODY_TIMEOUT_S):
    """The request body, refused past `limit` bytes before it is all in memory, or when it has not all
    arrived within `timeout` seconds."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, "validation", f"the body has {declared} bytes; at most {limit}")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(413, "validation", f"the body has more than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(408, "timeout", f"the body did not arrive within {timeout:g} s ({size} bytes came): "
                                         "send it whole") from None
    return b"".join(chunks)


def json_response(value, status=200, headers=None):
    """JSON without FastAPI's jsonable_encoder pass (the values are plain already); UTF-8 labels as they are."""
    return Response(json.dumps(value, ensure_ascii=False), status, headers, media_type="application/json")


def versions(backend):
    packages = ["numpy", "tokenizers", "fastapi", "uvicorn"] + (
        ["onnxruntime"] if backend == "onnx" else ["torch", "transformers"])
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
