"""The pyfunc definition MLflow logs as code (no pickled Python object in the artifact)."""

import mlflow

from training.tracking import NboRanker

mlflow.models.set_model(NboRanker())
