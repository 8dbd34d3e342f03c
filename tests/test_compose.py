"""docker-compose.yml and the Dockerfile, run as what they would start.

No Docker engine runs here, so the test reads the stack and starts what each
service would run, as processes on this machine: the Dockerfile's build step
that matters (collectstatic), the one-shot ``migrate``, the two replicas (the
image's command), nginx on ``deploy/nginx.conf``, the housekeeping job; it
runs every healthcheck command as written, and drives a chat through nginx.

What stands in for Docker: each container's own network becomes a port of its
own (``PORT``, which the image's command and health check read, 8000 when
unset); the compose host names ``postgres`` and ``redis`` become this test's
PostgreSQL database and Redis; ``python`` is this virtualenv's; ``/app`` is
the repository.
"""

import asyncio
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import websockets
import yaml

from tests.servers import ROOT, Nginx, free_port, recv, render_nginx_conf, server_environment, stop_process

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="needs docker-compose to read docker-compose.yml: apt-get install docker-compose"
)
VENV_BIN = str(Path(sys.executable).parent)


def compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``docker-compose config`` with exactly ``env`` for interpolation (no .env, none of the caller's)."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        [COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(empty), "config"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- Secrets ----------------------------------------------------------------------


@needs_compose
@pytest.mark.parametrize("value", [None, ""])
def test_compose_refuses_to_start_without_a_secret_key(tmp_path, value):
    env = {} if value is None else {"SECRET_KEY": value}
    done = compose_config(tmp_path, **env)
    assert done.returncode != 0
    assert "SECRET_KEY is not set" in done.stderr and ".env.example" in done.stderr


@needs_compose
def test_every_django_service_gets_the_secret_key_given(tmp_path):
    key = secrets.token_urlsafe(50)
    done = compose_config(tmp_path, SECRET_KEY=key)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    django = {name for name, service in services.items() if "SECRET_KEY" in service.get("environment", {})}
    assert django == {"migrate", "web1", "web2", "housekeeping"}
    assert {services[name]["environment"]["SECRET_KEY"] for name in django} == {key}


def test_env_example_names_the_secret_key_and_sets_none():
    lines = (ROOT / ".env.example").read_text().splitlines()
    assert "SECRET_KEY=" in lines  # empty: compose refuses it until it is filled in
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


# --- The image ----------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined: [(INSTRUCTION, arguments)]."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def instruction(name: str) -> list[str]:
    return [arguments for instr, arguments in dockerfile() if instr == name]


def image_env() -> dict[str, str]:
    """The image's ENV (``NAME=value`` pairs)."""
    return dict(pair.split("=", 1) for env in instruction("ENV") for pair in shlex.split(env))


def image_command() -> list[str]:
    (cmd,) = instruction("CMD")
    return json.loads(cmd)


def image_healthcheck() -> list[str]:
    (healthcheck,) = instruction("HEALTHCHECK")
    return json.loads(healthcheck.split(" CMD ", 1)[1])


def test_the_image_runs_as_a_user_of_its_own_with_a_health_check():
    (user,) = instruction("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric and not root, for runAsNonRoot"
    assert any(f"--uid {uid}" in run for run in instruction("RUN"))
    # The user comes after everything written at build time: it can write none of it.
    names = [name for name, _ in dockerfile()]
    assert names.index("USER") > max(i for i, name in enumerate(names) if name in ("RUN", "COPY"))
    assert image_healthcheck() == ["python", "-m", "chatsite.healthcheck"]
    assert any("collectstatic" in run for run in instruction("RUN"))


def test_the_health_check_fails_when_nothing_answers():
    done = subprocess.run(
        [sys.executable, "-m", "chatsite.healthcheck"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PORT": str(free_port())},
        timeout=30,
    )
    assert done.returncode == 1 and "/healthz" in done.stdout


# --- The stack, as processes ----------------------------------------------------------


class Stack:
    """What the compose services run, started as processes; stops all of them, by handle."""

    def __init__(self, config: dict, tmp_path: Path) -> None:
        self.services = config["services"]
        self.tmp = tmp_path
        self.processes: list[subprocess.Popen] = []
        self.nginx: Nginx | None = None
        # The compose host names, mapped to this test's services.
        base = server_environment(tmp_path)  # the test database, a Redis prefix of its own
        self.database_url, self.redis_url = base["DATABASE_URL"], base["REDIS_URL"]
        self.isolation = {name: base[name] for name in ("CHANNEL_LAYER_PREFIX", "CHAT_REDIS_PREFIX")}
        self.static_root = tmp_path / "image-staticfiles"

    def env(self, service: str, **extra: str) -> dict[str, str]:
        """A container's environment: the service's, with the compose host names mapped."""
        env = {name: str(value) for name, value in self.services[service].get("environment", {}).items()}
        for name, url in (("DATABASE_URL", self.database_url), ("REDIS_URL", self.redis_url)):
            if name in env:
                host = urlsplit(env[name]).hostname
                assert host in ("postgres", "redis"), env[name]
                env[name] = url
        return {
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "STATIC_ROOT": str(self.static_root),
            **image_env(),
            **self.isolation,
            **env,
            **extra,
        }

    def build(self) -> None:
        """The image's build steps that run the app (collectstatic), into this test's STATIC_ROOT."""
        for run in instruction("RUN"):
            if "manage.py" in run:
                done = subprocess.run(
                    ["sh", "-c", run], cwd=ROOT, env=self.env("migrate"), capture_output=True, text=True, timeout=120
                )
                assert done.returncode == 0, done.stderr

    def run(self, service: str, command: list[str], **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            command, cwd=ROOT, env=self.env(service, **extra), capture_output=True, text=True, timeout=120
        )

    def start(self, service: str, command: list[str], **extra: str) -> tuple[subprocess.Popen, Path]:
        log = self.tmp / f"{service}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=self.env(service, **extra), stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process, log

    def healthy(self, service: str, test: list[str], retries: int, **extra: str) -> subprocess.CompletedProcess:
        """Run a healthcheck's test as written (CMD: the command; CMD-SHELL: through sh) until it passes."""
        kind, *command = test
        command = ["sh", "-c", command[0]] if kind == "CMD-SHELL" else command
        for _ in range(max(retries, 30)):
            done = self.run(service, command, **extra)
            if done.returncode == 0:
                return done
            time.sleep(1)
        raise AssertionError(f"{service}: healthcheck {test} never passed: {done.stdout} {done.stderr}")

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for process in reversed(self.processes):
            stop_process(process)


@needs_compose
@pytest.mark.server
@pytest.mark.proxy
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_the_compose_stack_as_processes_serves_a_chat_through_nginx(tmp_path):
    # An operator's .env: a key, and the one host name served (bug: a probe by
    # IP got 400 and the replicas never became healthy).
    done = compose_config(tmp_path, SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="localhost")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert set(config["services"]) == {"postgres", "redis", "migrate", "web1", "web2", "nginx", "housekeeping"}
    stack = Stack(config, tmp_path)
    try:
        # postgres and redis: this machine's, probed with their own checks.
        db = urlsplit(stack.database_url)
        stack.healthy(
            "postgres",
            config["services"]["postgres"]["healthcheck"]["test"],
            20,
            PGHOST=db.hostname,
            PGPORT=str(db.port or 5432),
        )
        redis_url = urlsplit(stack.redis_url)
        kind, *command = config["services"]["redis"]["healthcheck"]["test"]
        # A container's redis-cli finds Redis on its own localhost; here, on the test's.
        where = ["-h", redis_url.hostname, "-p", str(redis_url.port or 6379)]
        stack.healthy("redis", [kind, command[0], *where, *command[1:]], 20)

        stack.build()
        migrate = stack.run("migrate", config["services"]["migrate"]["command"])
        assert migrate.returncode == 0, migrate.stderr

        # Two replicas: the image's command (no compose command), the image's health check.
        for web in ("web1", "web2"):
            assert "command" not in config["services"][web] and "healthcheck" not in config["services"][web]
        ports = {web: free_port() for web in ("web1", "web2")}
        for web, port in ports.items():
            stack.start(web, image_command(), PORT=str(port))
        for web, port in ports.items():
            checked = stack.healthy(web, ["CMD", *image_healthcheck()], 5, PORT=str(port))
            assert '"status": "ok"' in checked.stdout

        # nginx on deploy/nginx.conf, the file compose mounts.
        (mount,) = config["services"]["nginx"]["volumes"]
        source = mount.split(":")[0] if isinstance(mount, str) else mount["source"]  # compose v1 / v2
        assert source == str(ROOT / "deploy" / "nginx.conf")
        port = free_port()
        stack.nginx = Nginx(render_nginx_conf(port=port, upstreams=list(ports.values())), port, tmp_path / "nginx")

        # The housekeeping job: its first run at start, then it sleeps a day; it stops on SIGTERM.
        housekeeping = config["services"]["housekeeping"]
        assert housekeeping["healthcheck"]["test"] == ["NONE"]
        job, job_log = stack.start("housekeeping", housekeeping["command"])
        deadline = time.monotonic() + 60
        while "expired session(s)" not in job_log.read_text() and time.monotonic() < deadline:
            assert job.poll() is None, job_log.read_text()
            await asyncio.sleep(0.2)
        assert "stale settings row(s)" in job_log.read_text() and "expired session(s)" in job_log.read_text()
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=10) == 0

        # A chat through nginx, as two browsers at http://localhost:<nginx>.
        base = f"http://localhost:{port}"
        sessions, assets = [], set()
        for _ in range(2):
            with urllib.request.urlopen(f"{base}/chat/lobby/", timeout=10) as page:
                assert page.status == 200 and "no-store" in page.headers["Cache-Control"]
                sessions.append(SimpleCookie(page.headers["Set-Cookie"])["sessionid"].value)
                assets |= set(re.findall(r'"(/static/chat/chat\.[0-9a-f]{12}\.(?:js|css))"', page.read().decode()))
        assert len(assets) == 2
        for asset in assets:
            request = urllib.request.Request(base + asset, headers={"Accept-Encoding": "gzip, br"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.headers["Cache-Control"] == "max-age=31536000, public, immutable"
                assert response.headers["Content-Encoding"] == "br"

        def socket(session: str):
            return websockets.connect(
                f"ws://localhost:{port}/ws/chat/lobby/",
                origin=base,
                open_timeout=10,
                additional_headers={"Cookie": f"sessionid={session}"},
            )

        async with socket(sessions[0]) as ada, socket(sessions[1]) as grace:
            await recv(ada, "welcome")
            await recv(grace, "welcome")
            for session in sessions:  # what chat.js then asks: keep my session
                request = urllib.request.Request(
                    f"{base}/socket-opened?keep=1", method="POST", headers={"Cookie": f"sessionid={session}"}
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert json.load(response)["kept"] is True
            await ada.send(json.dumps({"type": "chat", "text": "through the compose stack", "client_id": "c1"}))
            assert (await recv(grace, "chat"))["text"] == "through the compose stack"
            assert (await recv(ada, "chat"))["text"] == "through the compose stack"
    finally:
        stack.stop()
    for web in ("web1", "web2"):
        log = (tmp_path / f"{web}.log").read_text(errors="replace")
        assert "Traceback" not in log and "DisallowedHost" not in log, log[-2000:]
