"""The OpenAI-compatible servers (FastAPI + uvicorn): the router (`route.py --serve`) and a local
model as a target endpoint (`python -m prp.serve`).

    limits    every input limit, its flag and its safe default (ServeLimits)
    schemas   pydantic request models (a 422 names the field) and response bodies
    chat      a validated request -> processor messages + checked images (per-request 4xx)
    images    image formats allowed, the decoded-bytes budget, the shrink to the processor's pixels
    guards    middleware: Host allow-list on loopback, requests (not sockets) counted
    worker    one model thread: a bounded queue, micro-batches, per-item isolation, cancellation
    backends  what the worker runs: the router (batched) or a local model (one at a time)
    app       the FastAPI app: auth, body limits, /health, /v1/models, /v1/chat/completions (+SSE)
    launch    uvicorn with a large backlog, header/keep-alive timeouts, `--limit-concurrency`
"""
