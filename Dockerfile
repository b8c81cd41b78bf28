# d3r for GPU workstations and Ray clusters.
# Build:  docker build -t d3r .
# Run:    docker run --gpus all --shm-size=16g -v $PWD/data:/data d3r d3r cache run --config conf/fast3r.yaml
# As a Ray cluster image: every node runs this image; the head `ray start --head`, workers `ray start --address`.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends git libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/d3r
# torch comes from the CUDA base image; pyproject.toml does not pull it.
COPY pyproject.toml README.md LICENSE ./
COPY d3r ./d3r
RUN python -m pip install --upgrade pip && python -m pip install -e .
COPY conf ./conf
COPY jobs ./jobs
COPY bench ./bench

# Ray dashboard / job API and GCS ports.
EXPOSE 8265 6379
CMD ["d3r", "--help"]
