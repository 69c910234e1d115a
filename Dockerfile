# The Baton image: one wheel built from this tree, installed into a slim Python runtime, run as a non-root user.
#   docker build -t baton:local .
#   docker run --rm --env-file baton.env baton:local worker        # or projector, api, replay --verify, token ...
# The command is the role (`baton ROLE`); docs/production.md lists what each role needs.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler for dependencies without a wheel for the build platform (faust-streaming on arm64); build stage only.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Third-party wheels first, in a layer that only a change of pyproject.toml rebuilds.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip wheel --wheel-dir /wheels -r /tmp/requirements.txt
COPY schemas schemas
COPY agents agents
COPY streams streams
COPY projections projections
COPY examples examples
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/baton \
    && /opt/baton/bin/pip install --no-index --find-links /wheels baton \
    && /opt/baton/bin/python -c "from streams.settings import Settings; assert Settings().tenants_file.is_file()"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/baton/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BATON_ENV=production \
    BATON_BROKER_PROFILE=kafka \
    BATON_API_HOST=0.0.0.0 \
    BATON_DATA_DIR=/var/lib/baton \
    BATON_LIVENESS_DIR=/tmp/baton-liveness
RUN groupadd --system --gid 10001 baton \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/baton --create-home --shell /usr/sbin/nologin baton
COPY --from=build /opt/baton /opt/baton
USER 10001:10001
WORKDIR /var/lib/baton
# 8080: the API (and its /metrics); 9100: the worker's or projector's /metrics (BATON_METRICS_PORT).
EXPOSE 8080 9100
# The role of this container's `baton` process decides: worker and projector must have touched their heartbeat
# file within 30 s (BATON_LIVENESS_MAX_AGE_S), the API must answer /healthz.
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 CMD ["python", "-m", "streams.liveness"]
ENTRYPOINT ["baton"]
CMD ["api"]
