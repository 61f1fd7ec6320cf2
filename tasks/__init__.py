"""What the farm does: one module per job kind, the shared task base, and the enqueue API."""
