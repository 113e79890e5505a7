# The search UI and the ingest CLI, CPU-only. Used by compose.yaml (service "ui").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False YOLO_CONFIG_DIR=/root/.cache/ultralytics

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# CPU wheels of torch keep the image around 2 GB instead of 8 GB with CUDA.
RUN pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY core core
COPY ingest ingest
COPY search_ui search_ui
RUN pip install .

EXPOSE 7860
CMD ["search-ui"]
