# The trainer image: `python -m pml_trainer` on Python 3.11 with TensorFlow 2.21 (CPU by default).
#
#   DOCKER_BUILDKIT=1 docker build -t parallel-ml:latest .      (or: pmlctl image build)
#
# Build arguments:
#   BASE  a Debian-based image with Python 3.11, or plain Debian 12 (bookworm): python3 is then
#         installed from Debian, which is Python 3.11 too. Teams with their own mirror, or without
#         Docker Hub, point this at an image they have.
#   GPU   1 installs TensorFlow with its CUDA libraries instead of the CPU-only build.
#   UID   numeric user the trainer runs as (Kubernetes' runAsNonRoot needs a number).
# Behind a TLS-intercepting proxy, give pip the proxy's CA bundle as a build secret:
#   docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt .
ARG BASE=python:3.11-slim

# Python and CA certificates, whichever BASE was given; shared by the builder and the final image.
FROM ${BASE} AS runtime
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'

FROM runtime AS builder
ARG GPU=0
# Debian's python3 keeps venv's pip bootstrap in a separate package; python:3.11-slim has it.
RUN python3 -c 'import ensurepip' 2>/dev/null || { \
        apt-get update && apt-get install -y --no-install-recommends python3-venv; }
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that a code change does not download
# TensorFlow again. docker/requirements.py picks what the trainer needs: the CLI's own
# dependencies (helm-python-sdk alone is 240 MB) stay out.
COPY pyproject.toml docker/requirements.py ./
RUN --mount=type=secret,id=ca_bundle,required=false \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python requirements.py pyproject.toml $([ "$GPU" = 1 ] && echo --gpu) > requirements.txt \
    && cat requirements.txt \
    && pip install -r requirements.txt

# The project itself, as a wheel. Its declared dependencies are installed above (the trainer's)
# or deliberately left out (the CLI's), hence --no-deps.
COPY . ./
RUN --mount=type=secret,id=ca_bundle,required=false \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --no-deps /wheels/*.whl \
    && python -c 'import pml_trainer.options, pml_trainer.tf_config'

# Build tooling must not reach the final image: pip itself, and what TensorFlow ships for building
# rather than running: the C++ headers for custom ops (290 MB) and libclang, the C compiler front
# end (60 MB; TensorFlow never imports it).
RUN pip uninstall -y libclang setuptools wheel pip \
    && rm -rf /opt/venv/lib/python3.11/site-packages/tensorflow/include

FROM runtime
ARG UID=10001
# No compiler, pip or build cache comes along: only the finished virtualenv.
COPY --from=builder /opt/venv /opt/venv
RUN groupadd --gid ${UID} trainer && useradd --uid ${UID} --gid ${UID} --create-home trainer
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /home/trainer
USER ${UID}:${UID}
# 2222: TensorFlow's gRPC server; 2223: the chief's job-state endpoint (TF port + 1).
EXPOSE 2222 2223
ENTRYPOINT ["python", "-m", "pml_trainer"]
