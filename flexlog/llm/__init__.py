"""The LLM voter's parts: prompt rendering, label decoding and inference backends."""
