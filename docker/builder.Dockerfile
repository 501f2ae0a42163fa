# The builder: the TensorRT container of the same NGC release as the server, plus this project's
# build dependencies and the server's DALI version. It builds the TensorRT plan and serializes the
# DALI pipelines with the exact TensorRT and DALI versions the server loads them with.
ARG NGC_RELEASE
FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3

ARG DALI_VERSION
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
# The `build` extra has no DALI: the only DALI here is the server's.
RUN pip install --no-cache-dir "/src[build,loadtest,test]" "nvidia-dali-cuda130==${DALI_VERSION}" \
 && python -c "import tensorrt, nvidia.dali as d; print('TensorRT', tensorrt.__version__, 'DALI', d.__version__); \
assert d.__version__ == '${DALI_VERSION}', 'installed DALI differs from DALI_VERSION'"
ENV DALI_VERSION=${DALI_VERSION}

WORKDIR /workspace
ENV PYTHONPATH=/workspace
