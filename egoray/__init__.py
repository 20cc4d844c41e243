"""egoray: egocentric video-language research workflows as resumable Ray jobs."""

__version__ = "0.1.0"
