# linewatch lite image: every process that never runs the model, so no torch in it.
# Default: the camera producer (one container per camera). Also runs the dashboard
# (`workers.dashboard`), the topics job (`workers.topics`), the alert subscriber and the
# dead-letter tool: `command: ["workers.dashboard"]`.
#   docker build -f deploy/docker/lite.Dockerfile -t linewatch/lite:0.1.0 .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY model ./model
COPY pipeline ./pipeline
COPY workers ./workers
# Without the [model] extra: torch, torchvision and safetensors are not installed.
RUN pip install . && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin linewatch

USER 10001
ENV LINEWATCH_HTTP__HOST=0.0.0.0 \
    LINEWATCH_HTTP__PORT=9101
EXPOSE 9101
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9101/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m"]
CMD ["workers.producer"]
