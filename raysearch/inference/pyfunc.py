"""An exported model as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(images)` labels images as
`raysearch predict` does (same model, same preprocessing), one row per image.

The input is what `Model.predict` takes (image paths, folders, glob patterns, or a grey array (N, H, W)), or a
DataFrame with an `image` column of paths; the output is a DataFrame of the predictions' JSON fields (`image`,
`class_name`, `probability`, `probabilities`, `polygon`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from raysearch.inference.predict import Model, load_model

MODEL_ARTIFACT = "exported_model"   # the artifact key of the exported folder inside the pyfunc model


class ExportedModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a raysearch exported model folder (config.yaml + weights.pt)."""

    def load_context(self, context: Any) -> None:
        """Load the exported folder that MLflow copied beside the pyfunc model."""
        self.model: Model = load_model(Path(context.artifacts[MODEL_ARTIFACT]))

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Label `model_input` (see the module's docstring); MLflow may hand a DataFrame over as its rows (dicts)."""
        if isinstance(model_input, pd.DataFrame):
            model_input = model_input.to_dict("records")
        images = [str(item["image"]) if isinstance(item, dict) else item for item in model_input]
        return pd.DataFrame([p.to_dict() for p in self.model.predict(images)])


def log_pyfunc_model(tracking_uri: str, run_id: str, model_dir: Path, name: str = "model") -> None:
    """Log the exported folder `model_dir` to the MLflow run `run_id` as the pyfunc model `name`."""
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pyfunc.log_model(name=name, python_model=ExportedModel(),
                                artifacts={MODEL_ARTIFACT: str(Path(model_dir).resolve())})
