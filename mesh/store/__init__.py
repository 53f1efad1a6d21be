"""Local storage of a node: content-addressed chunk files and transactional metadata."""
