"""The HTTP server of `pyrt serve`: a thin ASGI app (Starlette + uvicorn, the `server` extra) over
pyrt.engine. OpenAI-compatible endpoints plus llama-server's extras (health, metrics, tokenize, slots).
"""
