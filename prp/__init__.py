"""PRP: the Proactive Routing Paradigm for efficient visual reasoning."""

__version__ = "0.1.0"
