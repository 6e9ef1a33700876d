# One image for the API and the worker.
#   CPU:  docker build -t fitserve .
#   CUDA: docker build -t fitserve:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# The CUDA wheel carries its own CUDA runtime; the host needs only the NVIDIA driver and the
# NVIDIA container toolkit (docker-compose.yml reserves a GPU for the worker).
FROM python:3.11-slim AS base

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /srv/fitserve

# torch first, from the chosen index, so the layer is cached across code changes.
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0

COPY pyproject.toml README.md alembic.ini ./
COPY clients ./clients
COPY app ./app
COPY models ./models
COPY migrations ./migrations
RUN pip install ./clients/python . && useradd --system --uid 10001 fitserve

USER fitserve
EXPOSE 8000
# Inside a container the API must listen on all interfaces; fitserve then requires API keys
# (create one with `docker compose run --rm migrate fitserve keys create NAME`).
ENV FITSERVE_HOST=0.0.0.0
# CPU-bound prediction traffic: add "--api-processes", "N" (about one per core the container gets;
# each process holds its own model cache). Migrations still run once, before the processes start.
CMD ["fitserve", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]
