"""What serve_plm.py runs: the HTTP service (app.py), its dynamic batcher (batcher.py), the request
contract (requests.py), Prometheus metrics (metrics.py) and the page (page.html). Sits beside
inference/, whose classifiers it serves; nothing about the model is re-implemented here."""
