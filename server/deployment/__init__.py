"""Deployment on Flower's own runtime: SuperLink, SuperNodes, TLS and node keys.

``local_federation`` starts a whole federation on loopback (``fedmodel deploy-local``);
``certificates`` and ``node_keys`` make the files a real, multi-machine deployment needs.
"""
