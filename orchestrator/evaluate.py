"""`python -m orchestrator.evaluate`: the command `isic-evaluate` (`orchestrator.evaluation.evaluate`)."""

from orchestrator.evaluation.evaluate import cli

if __name__ == "__main__":
    cli()
