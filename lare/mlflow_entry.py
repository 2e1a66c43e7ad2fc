"""What MLflow runs to load a LaRe MLflow model (models from code: the model is this file plus its artifacts, no
pickle). The class lives in lare.mlflow_model; this file is copied into every saved model."""

import mlflow

from lare.mlflow_model import LaRePyfunc

mlflow.models.set_model(LaRePyfunc())
