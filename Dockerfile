# One image for every process of the service: the API (default CMD), the worker
# (`python -m worker`) and the one-shot migration (`python -m jobs.admin migrate`).
# docker-compose.yml runs all three from it; see docs/PRODUCTION.md.
#
#   docker build -t kd-service .                                    # torch from requirements.txt (PyPI)
#   docker build -t kd-service \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .   # CUDA build of torch
#
# TORCH_INDEX: a PyTorch wheel index. When set, torch==2.13.0 is installed from it first (e.g.
#   .../whl/cu128 for the CUDA build a GPU worker needs, or .../whl/cpu for the smallest CPU-only
#   image); requirements.txt then finds torch already satisfied (a local label such as +cu128 still
#   matches ==2.13.0) and installs the rest from PyPI. When empty (the default), torch comes from
#   the pin in requirements.txt like every other dependency. Pick the cuXYZ index your GPU hosts'
#   NVIDIA driver supports.
FROM python:3.11-slim

ARG TORCH_INDEX=""
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user; /data is created here so a fresh named volume inherits its owner.
RUN useradd --create-home --uid 10001 --user-group kd \
 && mkdir -p /data \
 && chown kd:kd /data

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN if [ -n "$TORCH_INDEX" ]; then \
        pip install --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}"; \
    fi \
 && pip install -r requirements.txt

# The code (root-owned, so the service cannot rewrite itself). One COPY per directory: a
# multi-source COPY would spill the directories' contents into /app instead of keeping them.
COPY api ./api
COPY jobs ./jobs
COPY kdcore ./kdcore
COPY worker ./worker
COPY migrations ./migrations
COPY scripts ./scripts
COPY alembic.ini ./alembic.ini

ENV KD_DATA_DIR=/data
VOLUME ["/data"]
USER kd
EXPOSE 8000

# Liveness of the API (slim has no curl). Compose disables it for the worker and migrate services.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KD_API_PORT', '8000'), timeout=4)"]

CMD ["python", "-m", "api"]
