"""The ingest pipeline's text layer: extract (bytes → text blocks), normalise, chunk."""
