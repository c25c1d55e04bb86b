"""Retrieval for the prompt: descriptions of log templates and system calls.

``KnowledgeCorpus`` reads the shipped corpus (``knowledge/*.jsonl``) and user files;
``KnowledgeIndex`` finds knowledge for the keys of a sequence, exactly by key or, for an unseen
(evolved) template, by the nearest embedding; ``format_knowledge`` turns the hits into prompt
lines. Only numpy is imported here: faiss and sentence-transformers load on first use.
"""

from flexlog.rag.corpus import KnowledgeCorpus, KnowledgeRecord, normalize_template
from flexlog.rag.embeddings import Embedder, default_model_dir
from flexlog.rag.index import KnowledgeIndex, Retrieved, format_knowledge

__all__ = [
    "Embedder",
    "KnowledgeCorpus",
    "KnowledgeIndex",
    "KnowledgeRecord",
    "Retrieved",
    "default_model_dir",
    "format_knowledge",
    "normalize_template",
]
