"""The service's Prometheus metrics (GET /metrics, text format), in a registry of the app's own so that
several apps in one process (the tests) do not share counts."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("finetune_plm_requests", "POST /predict requests answered, by HTTP status",
                                ["status"], registry=r)
        self.errors = Counter("finetune_plm_errors", "requests refused or failed, by error_type", ["error_type"],
                              registry=r)
        self.inputs = Counter("finetune_plm_inputs", "texts (or text pairs) classified", registry=r)
        self.batch_size = Histogram("finetune_plm_batch_size", "texts per forward pass", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_length = Gauge("finetune_plm_queue_length", "texts waiting for a batch", registry=r)
        self.latency = Histogram("finetune_plm_request_duration_seconds",
                                 "POST /predict from request to response", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("finetune_plm_queue_duration_seconds", "time a request waited for its batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("finetune_plm_inference_duration_seconds", "one batch's forward pass",
                                           buckets=LATENCY_BUCKETS, registry=r)
