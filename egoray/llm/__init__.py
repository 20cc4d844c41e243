"""LLM engines, prompts, structured outputs and the generation steps built on them."""
