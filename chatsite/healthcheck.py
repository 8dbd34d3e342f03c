"""The container's health check: ``python -m chatsite.healthcheck`` exits 0 if this server's ``/healthz`` says ok.

Slim images have no curl; Python is there. It asks the server in the same
container (``127.0.0.1``, port ``PORT``, 8000 by default, as the Dockerfile's
command listens) with a timeout under Docker's, prints why when it fails
(``docker inspect`` shows it) and imports nothing of Django.
"""

import os
import sys
import urllib.error
import urllib.request

TIMEOUT = 4.0  # seconds; the Dockerfile's HEALTHCHECK allows 5


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            body = response.read(500).decode(errors="replace")
            print(f"{url}: {response.status} {body}")
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as error:  # 503: the database or the channel layer does not answer
        print(f"{url}: {error.code} {error.read(500).decode(errors='replace')}")
    except OSError as error:
        print(f"{url}: {error}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
