"""HTTP layer: routes parse and authenticate requests, call services, render JSON."""
