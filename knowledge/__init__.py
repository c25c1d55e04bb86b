"""The retrieval corpus flexlog ships (JSONL), and the scripts that rebuild it."""
