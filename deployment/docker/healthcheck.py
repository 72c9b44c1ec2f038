"""The images' HEALTHCHECK: GET a path (/health by default) of this container's service.

Usage: healthcheck.py api|embedder [PATH]. The port is the service's own setting (DC_API_PORT,
DC_EMBEDDER_PORT), read from the environment as the service reads it; the probe goes to
loopback, which a service bound to 0.0.0.0 answers too. Exits 0 on a 200, 1 otherwise (with
the reason on stderr, which docker keeps in the health log). Only the standard library, so the
probe starts in milliseconds and the images need no curl.
"""

import os
import sys
import urllib.error
import urllib.request

# role -> (the setting holding its port, the setting's default: dc.config.Settings)
PORTS = {"api": ("DC_API_PORT", "8000"), "embedder": ("DC_EMBEDDER_PORT", "8501")}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] not in PORTS:
        print(f"usage: healthcheck.py {'|'.join(PORTS)} [PATH]", file=sys.stderr)
        return 2
    variable, default = PORTS[argv[0]]
    path = argv[1] if len(argv) == 2 else "/health"
    url = f"http://127.0.0.1:{os.environ.get(variable, default)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as answer:
            return 0 if answer.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
