"""Training: feature banks and windows (Ray-free), models, losses, and the Ray Train driver."""
