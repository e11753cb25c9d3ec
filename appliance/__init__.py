"""appliance: fine-tune a chat model, serve it behind an OpenAI-compatible API, and measure what changed."""

__version__ = "0.1.0"
