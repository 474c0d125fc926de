# CI only: the stand-in for python:3.11-slim, which cannot be pulled on the CI machines.
# RAW_IMAGE is Debian bookworm (debootstrap --variant=minbase) with python3, pip and venv, imported by
# .ci/deploy-check. This layer adds what is specific to the CI machine: its CA bundle (pip reaches PyPI
# through it) and its local torch CPU wheel, found through find-links; the project's Dockerfile is unchanged.
ARG RAW_IMAGE=adamix-ci/bookworm-python:raw
FROM ${RAW_IMAGE}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY pip.conf /etc/pip.conf
COPY wheels/ /opt/wheels/
ENV LANG=C.UTF-8 \
    PIP_FIND_LINKS=/opt/wheels \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
