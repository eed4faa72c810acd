"""mtr: teach language models to use tools without live APIs (models as tools, SFT then GRPO)."""

__version__ = "0.1.0"
