# Worker, trainer and load generator image: CPU-only torch, then the project.
# Layers from the least to the most often changed: torch (~200 MB, changes with its pin),
# the dependencies (change with pyproject.toml), the code (every commit rebuilds in seconds).
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# The CPU wheel index: a plain `pip install torch` would pull the CUDA build (GBs).
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
# Dependencies only: empty packages stand in for the code, so this layer depends on
# pyproject.toml alone; the project itself is removed again and installed below.
COPY pyproject.toml README.md ./
RUN mkdir streams models trainer && touch streams/__init__.py models/__init__.py trainer/__init__.py \
    && pip install ".[rocksdb]" && pip uninstall -y stream-reranker && rm -rf streams models trainer build
COPY streams ./streams
COPY models ./models
COPY trainer ./trainer
RUN pip install --no-deps . && rm -rf build
# Not root; /data (per-container state) and /models (shared versions) are volume mount points,
# created here so that new volumes start owned by this user.
RUN useradd --system --uid 10001 --home-dir /app reranker \
    && mkdir -p /data /models && chown reranker /data /models
USER reranker
VOLUME ["/data"]
EXPOSE 6066 9100 9101
ENTRYPOINT ["reranker"]
