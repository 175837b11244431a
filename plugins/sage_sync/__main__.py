"""Entry point of ``python -m sage_sync`` (see ``sage_sync.cli.commands``)."""

from sage_sync.cli.commands import main

# Only under `python -m sage_sync`: a loader that imports this file under the name __main__
# (Airflow's plugin scan does) must not run the CLI with its own argv.
if __name__ == "__main__" and __package__ == "sage_sync":
    main()
