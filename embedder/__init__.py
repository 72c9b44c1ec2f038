"""The central embedding service: Flask under gunicorn around `dc.nlp.embeddings.LocalEmbedder`."""
