# CI only: the stand-in for prom/prometheus, which cannot be pulled on the CI machines: Debian's
# prometheus binary (copied from the host's package) on the bookworm base, laid out like the official image.
ARG RAW_IMAGE=adamix-ci/bookworm-python:raw
FROM ${RAW_IMAGE}
COPY prometheus /bin/prometheus
RUN mkdir -p /etc/prometheus /prometheus \
    && chown nobody:nogroup /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
