FROM python:3.11-slim
WORKDIR /app
COPY . /app
# [train]: `driftline models train-initial` and the retrain controller's jobs fit models
RUN pip install --no-cache-dir '.[train]' && mkdir -p /data
ENV DRIFTLINE_DATA_DIR=/data
