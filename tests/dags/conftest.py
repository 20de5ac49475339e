"""Airflow for the DAG tests: a scratch AIRFLOW_HOME (SQLite), no examples, our dags/.

Airflow reads its configuration when first imported, so the environment is set when pytest
loads this file, before any test module imports Airflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
VENV_BIN = REPO / ".venv" / "bin"

AIRFLOW_ENV = {
    "AIRFLOW_HOME": tempfile.mkdtemp(prefix="fleetlens-airflow-"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
}
os.environ.update(AIRFLOW_ENV)
