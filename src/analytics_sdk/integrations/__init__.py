"""Framework integrations: ASGI and WSGI middleware, and thin adapters for FastAPI/Starlette,
Flask and Django over them.

Each framework lives in its own module and is imported only when that module is; importing
``analytics_sdk`` never imports a framework.
"""
