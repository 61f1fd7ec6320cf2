"""photos.*: uploaded originals into the variants the apps show, stored and recorded."""
