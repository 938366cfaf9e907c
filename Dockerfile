# clockfleet: the project image (publisher, agent, collector, status, keygen in one).
#
#   docker build -t clockfleet:0.1.0 .
#   docker run --rm clockfleet:0.1.0 --help
#
# compose.yaml builds and uses it for the publisher, the collector and the sample agents.
# BASE_IMAGE: a pinned release of python:3.11-slim (Debian 12) by default; where no registry is
# reachable, compose.local.yaml builds it on a local Debian 12 base with a Python 3.11
# virtualenv on the PATH instead (packaging/images/build-compose-base.sh).
ARG BASE_IMAGE=python:3.11.10-slim-bookworm
FROM ${BASE_IMAGE}

# mosquitto: only for mosquitto_passwd, which broker/clockfleet-identities calls (compose's
# setup step writes the broker's password file with it; no broker runs in this image).
# openssl: compose's setup step makes a throw-away CA for the broker's TLS listener.
# tzdata: the agent refuses time zone names that /usr/share/zoneinfo does not have.
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto openssl tzdata \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY clockfleet/ clockfleet/
COPY publisher/ publisher/
COPY agent/ agent/
COPY collector/ collector/
RUN pip install --no-cache-dir '.[all]' && rm -rf /src

COPY broker/clockfleet-identities broker/make-test-ca /usr/local/bin/

# Never root at run time: uid 10001 owns the state directory (named volumes mounted there
# inherit its ownership).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/clockfleet --create-home \
        --shell /usr/sbin/nologin clockfleet
USER clockfleet
WORKDIR /var/lib/clockfleet

ENTRYPOINT ["clockfleet"]
CMD ["--help"]
