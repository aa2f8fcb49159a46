# ws-gateway image. Build the wheels first (the build itself needs no network); the gateway's wheel
# compiled with mypyc (setup.py), as the project ships it:
#   WS_GATEWAY_COMPILE=1 pip wheel -w wheels . && docker build -t ws-gateway .
# `make image` does both with podman (scripts/build-image.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY wheels/ /wheels/
RUN python3 -m venv /opt/ws-gateway \
    && /opt/ws-gateway/bin/pip install --no-cache-dir --no-index --find-links /wheels ws-gateway

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ws-gateway" \
      org.opencontainers.image.description="WebSocket gateway sidecar for FastAPI apps: keepalive, close-code fidelity, drain, metrics" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/ws-gateway /opt/ws-gateway
COPY config/gateway.yaml /etc/ws-gateway/gateway.yaml
ENV PATH=/opt/ws-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric non-root user: runAsNonRoot can verify it, and nothing needs to write to the root filesystem.
USER 10001:10001
EXPOSE 8080 9102
STOPSIGNAL SIGTERM
ENTRYPOINT ["ws-gateway"]
CMD ["--config", "/etc/ws-gateway/gateway.yaml"]

# The example FastAPI app (examples/app.py) on the same base, used by the chart's standalone
# mode and the image tests: build the wheels with `pip wheel -w wheels . fastapi uvicorn websockets`,
# then docker build --target example-app -t ws-gateway-example-app .
FROM build AS example-build
RUN /opt/ws-gateway/bin/pip install --no-cache-dir --no-index --find-links /wheels fastapi uvicorn websockets

FROM runtime AS example-app
COPY --from=example-build /opt/ws-gateway /opt/ws-gateway
COPY examples/ /app/examples/
WORKDIR /app
EXPOSE 8000
ENTRYPOINT ["python", "-m", "uvicorn", "examples.app:app"]
CMD ["--host", "127.0.0.1", "--port", "8000"]
