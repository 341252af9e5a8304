"""Text encoding: the encoder interface, MiniLM (embedded model), umT5 (Wan), caption clauses, hashing."""
