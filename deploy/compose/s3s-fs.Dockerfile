# syntax=docker/dockerfile:1
#
# The dev stack's S3 backend: s3s-fs, the signature-verifying S3 server the
# test suite and deploy/rehearse.sh run, at the version .ci/run installs.
# A development backend only: it keeps objects as plain files under /data.
FROM rust:1.95-bookworm AS build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo install s3s-fs --version 0.14.1 --features binary --locked --root /opt/s3s-fs

FROM debian:bookworm-slim
RUN groupadd --system --gid 10002 s3s \
    && useradd --system --uid 10002 --gid s3s --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin s3s \
    && mkdir -p /data/demo \
    && chown -R s3s:s3s /data
COPY --from=build /opt/s3s-fs/bin/s3s-fs /usr/local/bin/s3s-fs
USER 10002:10002
# A new named volume on /data starts with the image's /data: bucket `demo`.
VOLUME /data
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/s3s-fs"]
