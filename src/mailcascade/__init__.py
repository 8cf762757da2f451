"""mailcascade: build and debug LLM cascades for customer email."""

__version__ = "0.1.0"
