# One image, both roles: `backprop serve` (API + embedded workers, the default) and `backprop worker`.
# Migrations run as their own step: `docker run IMAGE backprop migrate`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BACKPROP_HOST=0.0.0.0 \
    BACKPROP_PORT=8000 \
    BACKPROP_DATABASE_URL=sqlite:////data/backprop.db \
    BACKPROP_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install -e . \
    && useradd --system --uid 10001 --home /app backprop \
    && mkdir -p /data && chown backprop /data

USER backprop
VOLUME ["/data"]
EXPOSE 8000
# SIGTERM checkpoints running jobs and requeues them; give it time: `docker stop --time 30`.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["sh", "-c", "backprop migrate && exec backprop serve"]
