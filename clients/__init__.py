"""What users run: the command line, the Python SDK and bots, and the browser clients."""
