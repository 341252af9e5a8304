"""Live serving: one open-ended session per device over a WebSocket, and the web page that drives it.

Needs the ``serve`` extra (FastAPI, uvicorn, websockets). Nothing here is imported by the engine.
"""
