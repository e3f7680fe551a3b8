# linewatch CPU image: inference worker by default; also runs the drift monitor
# (`command: ["workers.drift_monitor"]`), which reads the model artifacts. Build from the
# repository root:
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t linewatch/worker-cpu:0.1.0 .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU build of torch first, so `pip install ".[model]"` does not pull the CUDA build.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY model ./model
COPY pipeline ./pipeline
COPY workers ./workers
# [model]: torch (installed above from the right index), torchvision, safetensors, weights.
# [runtimes]: ONNX Runtime and OpenVINO for LINEWATCH_RUNTIME=onnxruntime|openvino (faster
# than eager PyTorch on CPUs, see README's runtime section).
# /models is created here owned by the process's user, so an empty named volume mounted
# there (compose) starts writable for uid 10001 instead of root-owned.
RUN pip install ".[model,runtimes]" \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin linewatch \
    && mkdir -p /models && chown 10001:10001 /models

USER 10001
# Probes must reach the endpoint from outside the container's loopback. OpenVINO: the
# fastest CPU runtime (README, "Inference runtimes"); exports go to a writable cache.
ENV LINEWATCH_HTTP__HOST=0.0.0.0 \
    LINEWATCH_HTTP__PORT=9100 \
    LINEWATCH_RUNTIME=openvino \
    LINEWATCH_RUNTIME_CACHE=/tmp/linewatch-runtime-cache
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m"]
CMD ["workers.inference"]
