# hdemucs-flax's HTTP API (`hdemucs-flax serve`) in a container; see README.md, "Serving over HTTP".
#
#   docker build -t hdemucs-flax .                                        # CPU
#   docker build -t hdemucs-flax:cuda --build-arg VARIANT=cuda .          # NVIDIA GPU (docker run --gpus all)
#   docker build -t hdemucs-flax --build-arg PRELOAD=1 .                  # the default model inside the image
#   docker build -t hdemucs-flax --build-arg MODEL=org/repo --build-arg PRELOAD=1 .   # another Hub model
#   docker run -p 8000:8000 -e HDEMUCS_API_TOKEN=... hdemucs-flax
FROM python:3.11-slim

# cpu or cuda: which pinned requirements docker/install.sh installs (cuda adds JAX's CUDA 12 plugin and the
# NVIDIA libraries as wheels; the host provides the driver through the NVIDIA container toolkit).
ARG VARIANT=cpu
# The model to serve (a Hub repo id; empty: the default model) and whether to download it while building.
ARG MODEL=""
ARG PRELOAD=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    USE_TORCH=0 \
    HDEMUCS_MODEL=${MODEL} \
    HDEMUCS_FLAX_CACHE=/home/hdemucs/.cache/hdemucs-flax \
    HF_HOME=/home/hdemucs/.cache/huggingface

RUN groupadd --gid 10001 hdemucs && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin hdemucs

COPY pyproject.toml README.md LICENSE /src/
COPY modeling_hdemucs_flax /src/modeling_hdemucs_flax
COPY docker /src/docker
RUN sh /src/docker/install.sh "${VARIANT}" /src && rm -rf /src

USER 10001:10001
WORKDIR /home/hdemucs
# The cache folders are made by the user, so the user owns them: a named volume mounted on /home/hdemucs/.cache
# starts as a copy of that folder, owner included (were it missing, Docker would make the volume root-owned and
# the server could not write its cache). Without PRELOAD the model is fetched into it at the first start.
RUN mkdir -p "${HDEMUCS_FLAX_CACHE}" "${HF_HOME}" \
    && if [ -n "${PRELOAD}" ]; then hdemucs-flax serve --preload; fi

EXPOSE 8000
# The health check answers 503 while the model is loaded and compiled (minutes on a cold CPU start).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/health', timeout=4)"]
CMD ["hdemucs-flax", "serve", "--host", "0.0.0.0", "--port", "8000"]
