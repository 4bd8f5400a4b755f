# GPU image for the paper profile, built from the repository root in one command:  docker build -t lmrepro .
# Base: NVIDIA's PyTorch container (NGC), whose torch, triton, CUDA, cuDNN and NCCL are built to work together.
# On top: every other pin of requirements/lock.txt (the versions the CPU test suite runs), flash-linear-attention
# included, and the project itself (`make setup` in this environment: kernel, Jupyter config, no CPU .venv).
# flash-attn is optional (see environment.yml): without it attention runs on FlexAttention / SDPA, logged.
ARG BASE=nvcr.io/nvidia/pytorch:26.11-py3
FROM ${BASE}

WORKDIR /workspace/lmrepro
# A venv that sees the base image's packages: torch and triton stay the image's (the lock's exact torch pin is the
# CPU wheel of the test machines), every other pin is installed into it; `make` uses it (LMREPRO_ENV) instead of
# building a CPU .venv.
ENV LMREPRO_ENV=/opt/lmrepro \
    DVC_NO_ANALYTICS=1 \
    TOKENIZERS_PARALLELISM=false
ENV PATH=${LMREPRO_ENV}/bin:${PATH}
COPY requirements/lock.txt requirements/lock.txt
RUN python -m venv --system-site-packages ${LMREPRO_ENV} \
    && grep -v -E '^(torch|triton)==' requirements/lock.txt > /tmp/pins.txt \
    && ${LMREPRO_ENV}/bin/python -m pip install --no-cache-dir -r /tmp/pins.txt \
    && rm /tmp/pins.txt

COPY . .
RUN make setup
CMD ["bash"]
