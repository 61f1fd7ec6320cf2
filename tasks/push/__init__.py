"""push.*: Apple push notifications over APNs' HTTP/2 provider API."""
