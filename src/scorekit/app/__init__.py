"""The application layer: the command line, the recipes behind its defaults, the demo and
the figures."""
