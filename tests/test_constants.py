"""Constants declared once in Python and repeated where Python cannot reach.

The client's websocket message limit is ``chatsite.server.MAX_CLIENT_MESSAGE_BYTES``;
the test and benchmark servers pass it from there (``DAPHNE_LIMIT_ARGS``).
The Makefile (``make run``) and the Dockerfile (the image's ``CMD``) cannot
import it and write the number: these tests fail when one of them says
another number, or stops passing the limit at all.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from bench import servers as bench_servers
from chatsite.server import DAPHNE_LIMIT_ARGS, MAX_CLIENT_MESSAGE_BYTES
from tests import servers as test_servers

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--websocket-max-message-size", "--websocket-max-frame-size")


def limits_in(text: str) -> dict[str, list[int]]:
    """Each size flag's values in ``text`` (a flag given as ``--flag N`` or ``--flag=N``)."""
    return {flag: [int(n) for n in re.findall(rf"{re.escape(flag)}[= ]+(\d+)", text)] for flag in FLAGS}


def test_the_limit_is_16_kib_for_messages_and_frames():
    assert MAX_CLIENT_MESSAGE_BYTES == 16 * 1024  # the contract (docs/protocol.md)
    assert limits_in(" ".join(DAPHNE_LIMIT_ARGS)) == {flag: [MAX_CLIENT_MESSAGE_BYTES] for flag in FLAGS}


@pytest.mark.parametrize("name", ["Makefile", "Dockerfile"])
def test_makefile_and_dockerfile_pass_the_same_limit(name):
    found = limits_in((ROOT / name).read_text())
    assert found == {flag: [MAX_CLIENT_MESSAGE_BYTES] for flag in FLAGS}, (
        f"{name} should pass {' and '.join(FLAGS)} {MAX_CLIENT_MESSAGE_BYTES} once each "
        f"(chatsite.server.MAX_CLIENT_MESSAGE_BYTES), found {found}"
    )


def test_makefile_run_passes_its_limit_to_the_server():
    makefile = (ROOT / "Makefile").read_text()
    run = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert run and "-m chatsite.server" in run.group(1) and "$(DAPHNE_ARGS)" in run.group(1)


def test_test_and_bench_servers_take_the_limit_from_python():
    for module in (test_servers, bench_servers):
        source = Path(module.__file__).read_text()
        assert "DAPHNE_LIMIT_ARGS" in source
        assert limits_in(source) == {flag: [] for flag in FLAGS}, f"{module.__name__} writes the number itself"


@pytest.mark.parametrize("behind_proxy, trusted", [("1", True), ("0", False), (None, False)])
def test_the_image_trusts_forwarded_headers_only_behind_a_proxy(behind_proxy, trusted):
    # daphne's --proxy-headers takes the client's address and scheme from
    # X-Forwarded-*: only when a proxy sets them (BEHIND_PROXY=1, as compose does).
    line = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    script = json.loads(line[4:])[2].replace("exec python", "exec echo python")
    env = {"PATH": os.environ["PATH"], "MIGRATE": "0", **({"BEHIND_PROXY": behind_proxy} if behind_proxy else {})}
    command = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert command[:3] == ["python", "-m", "chatsite.server"] and command[-1] == "chatsite.asgi:application"
    assert ("--proxy-headers" in command) is trusted
