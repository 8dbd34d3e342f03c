FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
EXPOSE 8000
# MIGRATE=0 skips the migration on start (docker-compose.yml migrates once,
# in a service of its own, before its replicas start).
CMD ["sh", "-c", "[ \"${MIGRATE:-1}\" = 0 ] || python manage.py migrate --noinput || exit 1; exec python -m chatsite.server -b 0.0.0.0 -p 8000 --websocket-max-message-size 16384 --websocket-max-frame-size 16384 --proxy-headers chatsite.asgi:application"]
