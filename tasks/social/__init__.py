"""social.*: cross-posting photos to the networks their owners chose."""
