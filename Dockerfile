# syntax=docker/dockerfile:1
# Guarded Inference Service: the HTTP/2 API (Hypercorn, h2c and HTTP/1.1 on port 8080) with
# the shipped model artifacts. Ollama and the guard model run beside it (docker-compose.yml).
#
#   docker build -t guarded-inference-service .
#   docker run --rm -p 8080:8080 -e OLLAMA_HOST=http://host.docker.internal:11434 \
#       guarded-inference-service

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv holding the CPU build of torch and the package ------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first and from the CPU index, as `make install` does: the default index serves the CUDA
# build, which drags in several GB of GPU libraries this image never uses. pip keeps its
# configured index (PyPI, or PIP_INDEX_URL) as the fallback and takes 2.13.0+cpu over a plain
# 2.13.0; when TORCH_INDEX does not answer within 5 s, torch comes from that index alone.
# `torch==2.13.0` in pyproject.toml is then already satisfied when the package is installed.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN if python -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=5)' "$TORCH_INDEX/torch/"; \
    then pip install --no-cache-dir --extra-index-url "$TORCH_INDEX" torch==2.13.0; \
    else echo "$TORCH_INDEX does not answer: torch from the configured index only" >&2; \
         pip install --no-cache-dir torch==2.13.0; fi

WORKDIR /src
COPY pyproject.toml ./
COPY service ./service
COPY agents ./agents
# A regular (non-editable) install: the package, with service/artifacts/* as package data,
# lands in the virtualenv, so the runtime stage needs nothing from /src. The artifact check
# runs isolated (-I: the working directory is not on the path), so it imports the installed
# package, not /src/service.
RUN pip install --no-cache-dir . \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; assert not torch.cuda.is_available()" \
    && python -I -c "from service.models.artifacts import PACKAGE_ARTIFACTS as p; assert 'site-packages' in str(p) and any(p.glob('*/model.safetensors')), p"

# --- runtime: the virtualenv and an unprivileged user, nothing else ---------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --create-home \
       --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv

# HOST=0.0.0.0 so the published port reaches the server; WORKERS is the process count
# (python -m service serve reads HOST, PORT and WORKERS like every other setting).
# GLIBC_TUNABLES as in the Makefile: without it glibc re-maps large activations on every call.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824 \
    HOST=0.0.0.0 \
    PORT=8080 \
    WORKERS=1

WORKDIR /app
USER 10001:10001

EXPOSE 8080

# Liveness of the process (readiness, which also needs Ollama and the guard model, is /readyz).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]

# The same start command as `make run`: Hypercorn serving HTTP/2 (h2c prior knowledge and
# Upgrade) and HTTP/1.1. SIGTERM drains in-flight requests for up to GRACEFUL_TIMEOUT seconds.
CMD ["python", "-m", "service", "serve"]
