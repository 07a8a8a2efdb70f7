"""The HTTP server: a JSON API over the `Translator` (or the `Classifier`, for a classification
model) and a web page to explore attention.

    transformer serve --model DIR          # then open http://127.0.0.1:8000/

`create_app(translator_or_classifier, settings)` builds the FastAPI application (app.py); the
dynamic batcher (batching.py) gathers concurrent requests into one batch on a single worker thread;
metrics.py exposes Prometheus metrics; static/ holds the web page (plain HTML/JS/CSS).
FastAPI and uvicorn are imported only by serve/ modules, and only when used: this package's
__init__ imports nothing, so `transformer.serve.tokens` stays light for other tools.
"""
