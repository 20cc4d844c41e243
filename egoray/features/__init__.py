"""Feature extraction: text and image encoders, CoCa captioning, caption de-duplication."""
