"""The read side the Connect pages and the CLI share: the status report, the dashboard, the emissions report."""
