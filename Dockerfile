# EZThrottle Edge: one node per container. Data (the SQLite job store) lives in /data.
# It listens on 0.0.0.0, so it needs an account, e.g. -e EZTHROTTLE_ACCOUNTS='[{"id": "acme", "key": "..."}]':
# without one the node refuses to start rather than serve a development account's key to the network.
# fly.toml runs this image on Fly.io (README.md, "Deploying on Fly.io").
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY edge ./edge
COPY cluster ./cluster
COPY scheduler ./scheduler
COPY simulations ./simulations
RUN pip install --no-cache-dir . && useradd --system --uid 10001 ezthrottle && mkdir /data && chown ezthrottle /data

USER ezthrottle
ENV EZTHROTTLE_SERVER_LISTEN=0.0.0.0:8080 \
    EZTHROTTLE_SERVER_DATA_DIR=/data
EXPOSE 8080
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz'); sys.exit(0)"
ENTRYPOINT ["ezthrottle", "serve"]
