# The appliance CLI without vLLM or a GPU: enough for `appliance eval` against a server
# (compose.yaml's `eval` service). Serving uses the official vllm/vllm-openai image.
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY appliance ./appliance
COPY evals ./evals
COPY data ./data
COPY models/registry.json ./models/registry.json
# the CPU build of torch keeps the image small; eval never runs a model itself
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu . \
    && rm -rf /src

ENV APPLIANCE_HOME=/work
WORKDIR /work
ENTRYPOINT ["appliance"]
CMD ["--help"]
