"""Hugging Face model adapters, imported lazily through the plugin registry."""
