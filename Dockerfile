# One image for every Topiary process: `topiary serve`, `topiary worker`, `topiary migrate`.
# The dependency pins are those of pyproject.toml and nothing else: the image installs
# the project itself (torch==2.14.1 from PyPI brings its CUDA libraries, so the same
# image runs CPU and GPU workers).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: rebuilt only when pyproject.toml changes.
# Empty stand-ins for the packages let pip resolve the project without its sources.
COPY pyproject.toml README.md ./
RUN for package in core models search workers service cli; do \
        mkdir -p "$package" && touch "$package/__init__.py"; \
    done \
    && pip install . \
    && pip uninstall -y topiary \
    && rm -rf core models search workers service cli build *.egg-info

# The project, without touching the dependencies installed above.
COPY core ./core
COPY models ./models
COPY search ./search
COPY workers ./workers
COPY service ./service
COPY cli ./cli
COPY alembic.ini ./
RUN pip install --no-deps . && pip check

# An unprivileged user owns the state folder (artifacts and uploads are volumes there).
RUN useradd --create-home --uid 10001 topiary \
    && mkdir -p /var/lib/topiary/artifacts /var/lib/topiary/uploads /data \
    && chown -R topiary:topiary /var/lib/topiary /data
USER topiary
ENV TOPIARY_HOME=/var/lib/topiary \
    TOPIARY_DATA_ROOT=/data

EXPOSE 8000
CMD ["topiary", "serve", "--host", "0.0.0.0", "--port", "8000"]
