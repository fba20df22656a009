# tinyllm-twin on Debian 12: the cross-compilers, QEMU, Verilator, LLVM and the project, with its
# firmware, QEMU plugin and RTL-board simulations built (scripts/setup does all of it, as on a host).
#   docker build -t tinyllm-twin .
#   docker build -t tinyllm-twin --build-arg RENODE_DEB=renode.deb .     # + Renode (a .deb in the context)
#   docker run --rm tinyllm-twin                                          # the demo
#   docker run --rm tinyllm-twin bash scripts/test                        # the tests
#   docker run --rm --device /dev/ttyACM0 tinyllm-twin twin bench --port /dev/ttyACM0 --platform stm32f4-disco
FROM debian:12

# Renode's release package, when the image is built where one is at hand: a .deb file in the build
# context (or a path to one). Without it the image has no Renode; `twin` says how to add it.
ARG RENODE_DEB=""

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/tinyllm-twin/.venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tinyllm-twin
COPY . .

# The project's own set-up: Debian packages, .venv with the package, firmware, plugin, RTL boards.
RUN bash scripts/setup && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3008
RUN if [ -n "$RENODE_DEB" ] && [ -f "$RENODE_DEB" ]; then \
      apt-get update && apt-get install -y --no-install-recommends "$(realpath "$RENODE_DEB")" \
      && .venv/bin/pip install --no-cache-dir pyrenode3 && rm -rf /var/lib/apt/lists/*; \
    else \
      echo "note: no RENODE_DEB given: the image has no Renode (build with --build-arg RENODE_DEB=file.deb)"; \
    fi

CMD ["twin", "demo"]
