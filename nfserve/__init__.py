"""``nf serve``: a local web page over the store (FastAPI + Jinja2, server-rendered)."""
