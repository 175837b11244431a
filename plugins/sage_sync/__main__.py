"""Entry point of ``python -m sage_sync`` (see ``sage_sync.cli.commands``)."""

from sage_sync.cli.commands import main
from sage_sync.cli.localenv import load_missing

# Only under `python -m sage_sync`: a loader that imports this file under the name __main__
# (Airflow's plugin scan does) must not run the CLI with its own argv.
if __name__ == "__main__" and __package__ == "sage_sync":
    load_missing()  # a fresh shell: the checkout's .local/env.sh fills in what is not set
    main()
