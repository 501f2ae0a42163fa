# The builder: the TensorRT container of the same NGC release as the server (a plan loads only in the
# TensorRT that built it), plus this project's build dependencies, all from the default package index.
# No DALI here has to match the server's: the cpu and gpu flavors ship the pipeline as dali.py, which
# the server's own DALI serializes when it loads the model. The DALI installed here (the project's
# release, built for CUDA 13) serializes the local flavor's CPU pipeline and runs the GPU tests.
ARG NGC_RELEASE
FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3 AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp

# A venv that still sees the container's own TensorRT Python module (never install another one).
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies only; the code itself runs from the bind-mounted project (PYTHONPATH below), so an
# edit on the host needs no image rebuild.
COPY pyproject.toml README.md /src/
COPY scripts /src/scripts
COPY client /src/client
COPY loadtest /src/loadtest
RUN pip install --no-cache-dir "/src[build,dali-cuda13,loadtest,test]" \
 && python -c "import tensorrt, nvidia.dali as d; print('TensorRT', tensorrt.__version__, 'DALI', d.__version__)"

WORKDIR /workspace
ENV PYTHONPATH=/workspace

# The builder with the project inside, for the Kubernetes build Job (helm/, docs/kubernetes.md), which has
# no project to bind-mount: docker build -f docker/builder.Dockerfile --target bundle --build-arg NGC_RELEASE=...
FROM builder AS bundle
COPY --chown=1000:1000 . /workspace
USER 1000:1000
