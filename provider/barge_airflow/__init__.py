"""Airflow provider for barge."""

__version__ = "0.1.0"


def get_provider_info():
    """What Airflow's provider manager lists (the `apache_airflow_provider` entry point)."""
    return {
        "package-name": "airflow-provider-barge",
        "name": "barge",
        "description": "Move large files between object stores with barge: parts in parallel, "
        "verified, resumable, on one worker or many.",
        "versions": [__version__],
        "hook-class-names": ["barge_airflow.hooks.barge.BargeHook"],
        "integrations": [
            {
                "integration-name": "barge",
                "external-doc-url": "https://github.com/barge/barge",
                "tags": ["software"],
            }
        ],
        "operators": [
            {"integration-name": "barge", "python-modules": ["barge_airflow.operators.barge"]}
        ],
        "hooks": [{"integration-name": "barge", "python-modules": ["barge_airflow.hooks.barge"]}],
        "triggers": [
            {"integration-name": "barge", "python-modules": ["barge_airflow.triggers.barge"]}
        ],
    }
