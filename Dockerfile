# Tollway: a slim runtime image, built in a separate stage so no compiler, pip cache or
# source tree ends up in it. Config comes from a mounted file and the environment.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY backends ./backends
RUN python -m venv /opt/tollway \
 && /opt/tollway/bin/pip install --no-compile '.[sentry]'

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 tollway \
 && useradd --system --uid 10001 --gid tollway --home-dir /var/lib/tollway --create-home tollway
COPY --from=build /opt/tollway /opt/tollway
ENV PATH=/opt/tollway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TOLLWAY_CONFIG=/etc/tollway/tollway.yaml \
    TOLLWAY_HOST=0.0.0.0 \
    TOLLWAY_PORT=8080
WORKDIR /var/lib/tollway
USER tollway:tollway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health/live', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tollway"]
CMD ["serve"]
