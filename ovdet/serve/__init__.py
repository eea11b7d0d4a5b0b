"""``ovdet serve``: an HTTP API with micro-batching and a browser page (the ``[serve]`` extra).

* :mod:`ovdet.serve.engine` — the worker thread that owns the model: bounded queue, micro-batches,
  vocabulary caches. No HTTP.
* :mod:`ovdet.serve.app` — :func:`create_app`: the FastAPI app (endpoints, limits, API key, page).
* :mod:`ovdet.serve.budget` — the memory budget: request bodies and decoded images in flight.
* :mod:`ovdet.serve.connections` — uvicorn's h11 protocol with a header deadline and a connection cap.
* :mod:`ovdet.serve.load` — a load generator for a running server (tests and benchmarks).
* ``static/`` — the page: plain HTML, JS and CSS, nothing fetched from elsewhere.

Example:
    >>> from ovdet import Detector
    >>> from ovdet.serve import create_app
    >>> det = Detector.from_pretrained("ovdet-demo")
    >>> app = create_app(det)  # then: uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from ovdet.serve.app import create_app
from ovdet.serve.engine import BatchEngine, QueueFull

__all__ = ["BatchEngine", "QueueFull", "create_app"]
