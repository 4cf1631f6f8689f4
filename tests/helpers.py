"""Small things many test modules share."""

# The browser routes' default policy (BROWSER_AUTH=proxy): an identity header from a trusted
# (loopback) proxy. Test clients of browser routes send it as the front end's proxy would.
BROWSER_IDENTITY = {"X-Forwarded-User": "test-user"}
