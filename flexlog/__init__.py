"""flexlog: anomaly detection on unstable logs by an ensemble of an LLM and ML detectors."""

__version__ = "0.1.0"
