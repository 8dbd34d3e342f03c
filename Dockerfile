FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# Every package pinned with its hashes, transitive ones included (README "Dependencies").
COPY requirements.txt .
RUN pip install --no-cache-dir --require-hashes -r requirements.txt
COPY . .
# Content-hashed, compressed static files (chat/static.py), written once into
# the image. The key only lets the settings load: nothing is signed here.
RUN DEBUG=0 SECRET_KEY=collectstatic-at-build-time python manage.py collectstatic --noinput -v0
# Not root: a user of its own, which can read the code and the static files
# but write none of them. (Numeric, so that an orchestrator's runAsNonRoot
# can check it.)
RUN groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid chat --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin chat
USER 10001:10001
EXPOSE 8000
# /healthz of the server in this container: the database and the channel
# layer answer (chatsite/healthcheck.py; Python, as slim images have no curl).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 CMD ["python", "-m", "chatsite.healthcheck"]
# MIGRATE=0 skips the migration on start (docker-compose.yml migrates once,
# in a service of its own, before its replicas start). PORT: 8000 unless set.
CMD ["sh", "-c", "[ \"${MIGRATE:-1}\" = 0 ] || python manage.py migrate --noinput || exit 1; exec python -m chatsite.server -b 0.0.0.0 -p \"${PORT:-8000}\" --websocket-max-message-size 16384 --websocket-max-frame-size 16384 $([ \"${BEHIND_PROXY:-0}\" = 1 ] && echo --proxy-headers) chatsite.asgi:application"]
