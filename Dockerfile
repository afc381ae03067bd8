# syntax=docker/dockerfile:1
# Two images from one file (see deploy/README.md):
#   docker build --target serve -t m2grl-serve:0.1.0 .   candidate service: .[serve], no torch
#   docker build --target train -t m2grl-train:0.1.0 .   daily retrain: .[train] with the CPU build of torch
# Builder stages compile wheels with gcc; the runtime stages copy only the virtual environment.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# libgomp1: hnswlib is compiled with -fopenmp. Unpinned on purpose: the Debian release of the base image
# fixes the version, and pins of Debian security updates break the build within weeks.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 m2grl \
    && useradd --system --uid 10001 --gid m2grl --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin m2grl

FROM base AS builder
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
# hnswlib has no wheels and compiles from source with -march=native unless HNSWLIB_NO_NATIVE is set (its
# setup.py, 0.8.0, drops the flag then): an image built on a new CPU would die with an illegal instruction
# on an older node. --no-binary hnswlib makes sure the variable always applies, even if wheels appear.
ENV HNSWLIB_NO_NATIVE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
# The dependency list of one extra, read from pyproject.toml, so that this slow layer is rebuilt only when
# pyproject.toml changes, not with every source edit.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['serve']))" > /tmp/serve.txt \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['train']))" > /tmp/train.txt

FROM builder AS build-serve
RUN pip install --no-binary hnswlib -r /tmp/serve.txt
COPY trainer ./trainer
COPY index_builder ./index_builder
COPY service ./service
COPY clients ./clients
RUN pip install --no-deps . && python -c "import hnswlib, service.app"

FROM builder AS build-train
# The registry's default torch wheel is the CUDA build (several GB of CUDA libraries); the PyTorch CPU
# index serves 2.13.0+cpu, which satisfies the torch==2.13.0 pin of pyproject.toml for the next install.
RUN grep '^torch' /tmp/train.txt > /tmp/torch.txt \
    && pip install --index-url https://download.pytorch.org/whl/cpu -r /tmp/torch.txt \
    && pip install --no-binary hnswlib -r /tmp/train.txt
COPY trainer ./trainer
COPY index_builder ./index_builder
COPY service ./service
COPY clients ./clients
RUN pip install --no-deps . && python -c "import hnswlib, torch, trainer.cli; assert not torch.cuda.is_available()"

FROM base AS serve
COPY --from=build-serve /opt/venv /opt/venv
# The index root (INDEX_ROOT/CURRENT + version folders) is mounted here, read-only in production.
ENV M2GRL_INDEX_ROOT=/data/indexes
VOLUME ["/data/indexes"]
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# /healthz answers as soon as the process runs; readiness (an index loaded) is /readyz, for the orchestrator.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# One uvicorn process per container: metrics live in process memory and the index is loaded once per process;
# scale with replicas. Other settings come from M2GRL_* variables (service/settings.py).
CMD ["m2grl-serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS train
COPY --from=build-train /opt/venv /opt/venv
COPY --chmod=0755 deploy/train/entrypoint.sh /usr/local/bin/m2grl-retrain
# Caches of matplotlib, numba and torch go to /tmp: the root filesystem is read-only in the cluster.
ENV DATA_ROOT=/data \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    XDG_CACHE_HOME=/tmp/.cache
VOLUME ["/data"]
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/m2grl-retrain"]
