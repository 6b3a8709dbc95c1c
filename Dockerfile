# pointsman: a multi-stage image. The build stage compiles the binary and fetches ONNX Runtime
# and the default model (pinned sha256s, scripts/setup.sh, which quantises it); the runtime stage is Debian slim,
# non-root, with the binary, the library, the model and the example routes' index.
#
#   docker build -t pointsman .
#   docker run --rm -p 8080:8080 pointsman
#
# Serve your own routes by mounting them and building the index at start-up:
#   docker run --rm -p 8080:8080 -v $PWD/routes:/app/routes:ro pointsman \
#     sh -c 'pointsman build routes/ --out /tmp/index && pointsman serve --index /tmp/index --routes routes/ --addr 0.0.0.0:8080'
#
# (Not built in this project's CI: the machines it runs on have no Docker engine.)

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/setup.sh > /tmp/env \
 && cargo build --release --locked \
 && . /tmp/env \
 && target/release/pointsman build routes/ --out /out/index

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /app pointsman
WORKDIR /app
COPY --from=build /src/target/release/pointsman /usr/local/bin/pointsman
COPY --from=build /src/.cache/pointsman/onnxruntime/ /app/onnxruntime/
COPY --from=build /src/.cache/pointsman/models/all-MiniLM-L6-v2-q8/ /app/models/all-MiniLM-L6-v2-q8/
COPY --from=build /src/routes/ /app/routes/
COPY --from=build --chown=pointsman /out/index/ /app/index/
ENV POINTSMAN_ORT_LIB=/app/onnxruntime/libonnxruntime.so.1.31.1 \
    POINTSMAN_MODEL_DIR=/app/models/all-MiniLM-L6-v2-q8 \
    POINTSMAN_INDEX=/app/index \
    POINTSMAN_ADDR=0.0.0.0:8080 \
    POINTSMAN_LOG_FORMAT=json
USER pointsman
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD curl -fs http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["pointsman"]
CMD ["serve", "--routes", "/app/routes"]
