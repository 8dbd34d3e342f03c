FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
EXPOSE 8000
CMD ["sh", "-c", "python manage.py migrate --noinput && exec python -m chatsite.server -b 0.0.0.0 -p 8000 --websocket-max-message-size 16384 --websocket-max-frame-size 16384 --proxy-headers chatsite.asgi:application"]
