"""One-time passwords: the application carried inside the secure channel."""
