# tensordock-autoscaler: a small, non-root image.
#   docker build -t tensordock-autoscaler .
#   docker run -d --name tdas -p 9464:9464 \
#     -v /etc/tensordock-autoscaler:/etc/tensordock-autoscaler:ro -v tdas-state:/var/lib/tensordock-autoscaler \
#     -e TDAS_TENSORDOCK__TOKEN_FILE=/run/secrets/tensordock-token tensordock-autoscaler
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TDAS_METRICS__HOST=0.0.0.0 \
    TDAS_METRICS__PORT=9464 \
    TDAS_STORE__URL=sqlite:////var/lib/tensordock-autoscaler/state.db

WORKDIR /opt/tensordock-autoscaler
COPY pyproject.toml README.md ./
COPY autoscaler ./autoscaler
COPY policies ./policies
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /var/lib/tensordock-autoscaler --shell /usr/sbin/nologin tdas \
    && mkdir -p /var/lib/tensordock-autoscaler /etc/tensordock-autoscaler \
    && chown tdas:tdas /var/lib/tensordock-autoscaler

USER 10001
VOLUME ["/var/lib/tensordock-autoscaler"]
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
ENTRYPOINT ["tensordock-autoscaler"]
CMD ["run", "--config", "/etc/tensordock-autoscaler/config.toml"]
