# syntax=docker/dockerfile:1.7
# The MLflow tracking server of infra/k8s (Deployment `mlflow`): MLflow pinned to the version the project tests,
# the PostgreSQL driver for the production backend store and boto3 for S3 artifacts. No CUDA, no project code.
#   docker build -f infra/docker/mlflow.Dockerfile -t lare-mlflow:3.17.2 infra/docker
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "mlflow==3.17.2" "boto3==1.44.8" "psycopg2-binary==2.9.10"

RUN groupadd --gid 1000 mlflow \
 && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin mlflow
USER 1000:1000
ENV HOME=/home/mlflow
WORKDIR /home/mlflow

EXPOSE 5000
ENTRYPOINT ["mlflow"]
# Inside a container the server must listen on the pod/container address; the Kubernetes Service and
# NetworkPolicy decide who reaches it. Run elsewhere, pass --host 127.0.0.1.
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
