"""Plumbing every layer uses, the provider, the store and the signals included: injected time,
secret masking, logging and a background WSGI server."""
