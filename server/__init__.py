"""The Flower ServerApp (``server.server_app:app``) and its strategies."""
