"""Model definitions and tiny offline presets."""
