"""Flow logic: what happens on a tool call, a callback, a registration; no HTTP, no key names."""
