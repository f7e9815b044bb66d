# Application image: CPU-only torch, then the project. Dependencies sit in their own layer
# so code changes rebuild in seconds.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
RUN mkdir streams models trainer && touch streams/__init__.py models/__init__.py trainer/__init__.py \
    && pip install ".[rocksdb]" && pip uninstall -y stream-reranker
COPY streams ./streams
COPY models ./models
COPY trainer ./trainer
RUN pip install --no-deps ".[rocksdb]"
ENTRYPOINT ["reranker"]
