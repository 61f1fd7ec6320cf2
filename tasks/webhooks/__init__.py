"""webhooks.*: signed POSTs to real-time subscribers of new photos."""
