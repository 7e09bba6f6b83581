"""followups: delivers clinicians' scheduled follow-up messages to parents."""

__version__ = "0.1.0"
