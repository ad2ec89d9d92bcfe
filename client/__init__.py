"""The Flower ClientApp (``client.client_app:app``)."""
