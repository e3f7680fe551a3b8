# linewatch CUDA inference worker. Needs the NVIDIA container toolkit on the host
# (compose: deploy.resources.reservations.devices; Kubernetes: nvidia.com/gpu).
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t linewatch/worker-cuda:0.1.0 .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# torch built against CUDA 12.8 (matches the base image's runtime libraries).
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu128

WORKDIR /app
COPY pyproject.toml README.md ./
COPY model ./model
COPY pipeline ./pipeline
COPY workers ./workers
# [model]: torch (installed above from the right index), torchvision, safetensors, weights.
# /models is created here owned by the process's user, so an empty named volume mounted
# there (compose) starts writable for uid 10001 instead of root-owned.
RUN pip install ".[model]" \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin linewatch \
    && mkdir -p /models && chown 10001:10001 /models

USER 10001
ENV LINEWATCH_HTTP__HOST=0.0.0.0 \
    LINEWATCH_HTTP__PORT=9100 \
    LINEWATCH_DEVICE=cuda
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=3s --start-period=90s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m"]
CMD ["workers.inference"]
