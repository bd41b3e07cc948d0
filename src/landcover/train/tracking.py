"""Optional MLflow logging of a finished run, for users who already run an MLflow tracking server."""

from __future__ import annotations

from pathlib import Path

from landcover.errors import LandcoverError


def _flat(data: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:500]
    return out


def log_to_mlflow(uri: str, out: Path, config: dict, rows: list[dict], experiment: str = "landcover") -> str:
    """Log a run's config (params), per-epoch metrics and files (curves, metrics, model.json); returns the run id."""
    try:
        import mlflow
    except ImportError:
        raise LandcoverError("--mlflow-uri needs MLflow: pip install mlflow-skinny (or mlflow)") from None
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=out.name) as run:
        mlflow.log_params(_flat(config))
        for row in rows:
            step = int(row.get("epoch") or 0)
            mlflow.log_metrics({k: float(v) for k, v in row.items()
                                if k != "epoch" and isinstance(v, int | float)}, step=step)
        for name in ("metrics.csv", "curves.png", "summary.json", "bundle/model.json"):
            if (out / name).exists():
                mlflow.log_artifact(str(out / name))
        return run.info.run_id
