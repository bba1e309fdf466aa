"""Minimal WSGI application served by gunicorn.

Settings come from a JSON file (APP_CONFIG, default /etc/app/config.json)
written by the app role.
"""

import json
import os

CONFIG_PATH = os.environ.get("APP_CONFIG", "/etc/app/config.json")


def _load_config(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


CONFIG = _load_config(CONFIG_PATH)


def application(environ, start_response):
    """Answer / with the configured greeting and /healthz with ok."""
    path = environ.get("PATH_INFO", "/")
    if path == "/healthz":
        status, ctype, body = "200 OK", "text/plain", "ok\n"
    elif path == "/":
        status, ctype = "200 OK", "application/json"
        body = (
            json.dumps(
                {
                    "name": CONFIG.get("name", "app"),
                    "greeting": CONFIG.get("greeting", "hello"),
                }
            )
            + "\n"
        )
    else:
        status, ctype, body = "404 Not Found", "text/plain", "not found\n"
    data = body.encode("utf-8")
    start_response(
        status,
        [("Content-Type", ctype + "; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]
