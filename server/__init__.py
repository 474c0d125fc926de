"""AdaMix Serve: the multi-tenant inference server (FastAPI) over one shared frozen backbone."""
