"""diag.*: `farm ping` round trips and synthetic jobs for the demo and tests."""
