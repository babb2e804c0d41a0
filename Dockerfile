# One image for every voicepipe process: migrate, workers, beat and Flower.
# Pinned to the patch release and Debian release CI tests with (Python 3.11.7).
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md alembic.ini beat_schedule.py constraints.txt ./
COPY voicepipe ./voicepipe
COPY worker ./worker
COPY tasks ./tasks
COPY models ./models
COPY migrations ./migrations
# Not the embedded extra: in a deployment DATABASE_URL and BROKER_URL name real servers.
# Every dependency at the exact version of constraints.txt: two builds install the same code.
RUN pip install -c constraints.txt . && rm -rf /src

# Never run as root: a task that misbehaves owns nothing outside its data folder.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/voicepipe voicepipe
USER voicepipe
ENV VOICEPIPE_DATA_DIR=/var/lib/voicepipe
WORKDIR /var/lib/voicepipe

CMD ["voicepipe", "--help"]
