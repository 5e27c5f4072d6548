# tensordock-autoscaler: a small, non-root image. Config and token come by mount or environment:
#   docker run -v /etc/tensordock-autoscaler:/etc/tensordock-autoscaler:ro \
#              -v tdas-state:/var/lib/tensordock-autoscaler tensordock-autoscaler --help
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/tensordock-autoscaler
COPY pyproject.toml README.md ./
COPY autoscaler ./autoscaler
COPY policies ./policies
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /var/lib/tensordock-autoscaler --shell /usr/sbin/nologin tdas \
    && mkdir -p /var/lib/tensordock-autoscaler \
    && chown tdas:tdas /var/lib/tensordock-autoscaler

USER 10001
VOLUME ["/var/lib/tensordock-autoscaler"]
ENTRYPOINT ["tensordock-autoscaler"]
CMD ["--help"]
