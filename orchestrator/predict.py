"""`python -m orchestrator.predict`: the command `isic-predict` (`orchestrator.evaluation.predict`)."""

from orchestrator.evaluation.predict import cli

if __name__ == "__main__":
    cli()
