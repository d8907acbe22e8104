"""`rlhf-serve`: an exported model behind the OpenAI Chat Completions API (docs/deploy.md).

cli.py (command line, uvicorn) -> app.py (FastAPI routes, SSE) -> engine.py (batching decode
loop on its own thread); protocol.py checks requests and shapes errors."""
