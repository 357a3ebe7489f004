FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir . && mkdir -p /data
ENV DRIFTLINE_DATA_DIR=/data
