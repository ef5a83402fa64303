# syntax=docker/dockerfile:1
# Relay: the SMTP submission gateway. Build:  docker build -t relay .
# Stage 1 builds wheels of Relay and of every dependency from this source tree; stage 2 installs
# them with no index (nothing is fetched at run time) and runs as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md relay.toml ./
COPY relay ./relay
COPY policies ./policies
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="Relay" \
      org.opencontainers.image.description="Self-hosted SMTP submission gateway"
RUN groupadd --system --gid 10025 relay \
    && useradd --system --uid 10025 --gid relay --home-dir /var/lib/relay --no-create-home \
       --shell /usr/sbin/nologin relay \
    && install -d -o relay -g relay -m 0750 /var/lib/relay \
    && install -d -m 0755 /etc/relay
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/relay_gateway-*.whl \
    && rm -rf /wheels
# Config: mount a file at /etc/relay/relay.toml and set RELAY_CONFIG to it, or set RELAY_* variables.
ENV PYTHONUNBUFFERED=1 \
    RELAY_DATA_DIR=/var/lib/relay \
    RELAY_SMTP_SUBMISSION=0.0.0.0:587 \
    RELAY_SMTP_SMTPS=0.0.0.0:465 \
    RELAY_API_LISTEN=0.0.0.0:8025
VOLUME ["/var/lib/relay"]
EXPOSE 587 465 8025
USER 10025:10025
WORKDIR /var/lib/relay
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["relay", "health"]
ENTRYPOINT ["relay"]
CMD ["serve"]
