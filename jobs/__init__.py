"""Command-line batch jobs: ``python -m jobs.<name> --help``. Each writes one run."""
