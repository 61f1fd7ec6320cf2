"""What the farm does: one package per domain (thin tasks.py over plain modules), the shared
machinery in core/, the blob store, and enqueue.py, the web tier's API."""
