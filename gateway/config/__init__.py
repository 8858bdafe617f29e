"""Configuration: frozen dataclasses loaded once from YAML and the environment."""
