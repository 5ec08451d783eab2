# syntax=docker/dockerfile:1
# Light image, no torch: the producer CLI (`zq submit|batch|campaign ...`), `zq exporter`,
# `zq beat`, the webhook sender, `zq api` and Flower (`celery -A worker.celery_app flower`).
#
#   docker build -f deploy/docker/light.Dockerfile -t zimage-queue-light .
#   docker run -e ZQ_REDIS_URL=redis://redis:6379/0 -p 9401:9401 zimage-queue-light exporter
#
# The Helm chart runs it as `image.lightRepository` (default zimage-queue-light).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY producer ./producer
COPY worker ./worker
COPY zq ./zq
# The base install plus Flower and the API; the `worker` extra (torch, diffusers) stays out.
RUN pip install ".[flower,api]" \
 && python -c "import importlib.util as u, zq.cli, producer.api.app; assert u.find_spec('torch') is None"

FROM python:3.11-slim
COPY --from=build /opt/venv /opt/venv
RUN groupadd --gid 10001 zq \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /home/zq --shell /usr/sbin/nologin zq \
 && mkdir -p /home/zq && chown 10001:10001 /home/zq
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/zq
EXPOSE 9401 5555 8000
USER 10001:10001
WORKDIR /home/zq
STOPSIGNAL SIGTERM
ENTRYPOINT ["zq"]
CMD ["exporter"]
