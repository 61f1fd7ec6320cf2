"""One module per `farm` subcommand."""
