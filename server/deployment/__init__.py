"""Deployment on Flower's own runtime: SuperLink, SuperNodes, TLS and node keys.

``deploy_local`` runs one job on a whole federation on loopback (``fedmodel deploy-local``),
``local_federation`` starts and stops that federation, ``flwr_cli`` drives Flower's ``flwr``
command, ``flower_processes`` starts, watches and stops Flower's processes,
``warm_executor`` is the warm task launcher and ``app_pin`` its check that a submitted app
is the installed one; ``certificates`` and ``node_keys`` make the files a real,
multi-machine deployment needs, ``private_files`` keeps what a deployment writes
owner-only.
"""
