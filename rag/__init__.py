"""Retrieval-augmented generation over Qdrant: ingestion, retrieval chains and groundedness scoring."""

__all__: list[str] = []
