"""Video: decoding, frame sampling and synthetic rendering."""
