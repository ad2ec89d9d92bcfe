"""Server-side strategy wrappers (composed around Flower strategies)."""
