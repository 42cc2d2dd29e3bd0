FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker broker
COPY signaling signaling
COPY clients clients
RUN pip install --no-cache-dir .
USER nobody
EXPOSE 8080
CMD ["vabroker", "serve", "--host", "0.0.0.0", "--port", "8080"]
