# The pubtasks worker image, for docker-compose.yml.
FROM python:3.11-slim

RUN useradd --create-home --uid 1000 pubtasks
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pubtasks ./pubtasks
RUN pip install --no-cache-dir . && chown pubtasks /app
COPY celeryconfig.py ./

USER pubtasks
# Beat keeps its schedule file (celerybeat-schedule) in /app, the working directory.
CMD ["celery", "-A", "pubtasks", "worker", "-B", "-l", "info"]
