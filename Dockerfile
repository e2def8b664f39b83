# syntax=docker/dockerfile:1
#
# tnsguard container image: a static binary on distroless, run as a non-root user.
#
#   docker build -t tnsguard --build-arg VERSION=$(git describe --tags --always) .
#   docker run -d --name tnsguard --restart unless-stopped -p 1522:1522 -p 127.0.0.1:9521:9521 \
#     -v $PWD/tnsguard:/etc/tnsguard:ro tnsguard        # ./tnsguard/tnsguard.toml: your config
#
# The final stage installs nothing: it only copies the binary and the config, so it
# builds without network once the base images are present. test/deploy checks this
# file's shape and builds the binary with the same command.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/tnsguard ./cmd/tnsguard

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tnsguard /usr/local/bin/tnsguard
# The image's config listens on 0.0.0.0 (a container's 127.0.0.1 is unreachable from
# outside); mount your own over it.
COPY configs/docker/tnsguard.toml /etc/tnsguard/tnsguard.toml
# 65532 is distroless's "nonroot"; named numerically so runAsNonRoot can verify it.
USER 65532:65532
# 1522: apps (listener), 9521: admin (/metrics /healthz /readyz /status).
EXPOSE 1522 9521
# Runs inside the container, so the default admin address 127.0.0.1:9521 reaches it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 CMD ["tnsguard","healthcheck"]
ENTRYPOINT ["tnsguard"]
CMD ["run","-config","/etc/tnsguard/tnsguard.toml"]
