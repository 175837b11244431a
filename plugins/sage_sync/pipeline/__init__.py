"""What the DAG tasks call: one company's sync, stream reads, deletions."""
