"""``fold_K/mlflow_run.json``: which MLflow run a fold's training logged to, so that ``--resume`` continues it.

Example:
    >>> MlflowRun("file:mlruns", "3f2a").write(MLFLOW_RUN_FILE)
    >>> MlflowRun.read(MLFLOW_RUN_FILE).run_id
    '3f2a'
"""

from __future__ import annotations

import dataclasses
import os

from autoseg.utils.files import read_json, write_json

MLFLOW_RUN_FILE = "mlflow_run.json"


@dataclasses.dataclass(frozen=True)
class MlflowRun:
    """The tracking URI a fold's run was recorded to and the run's id."""

    tracking_uri: str | None
    run_id: str | None

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> MlflowRun:
        stored = read_json(path)
        return cls(tracking_uri=stored.get("tracking_uri"), run_id=stored.get("run_id"))

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, {"tracking_uri": self.tracking_uri, "run_id": self.run_id})
