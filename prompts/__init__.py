"""Prompt templates flexlog ships, as data files."""
