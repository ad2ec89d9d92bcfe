"""fedmodel: the domain of private federated training (models, data, DP-SGD, accounting).

This package does not import Flower; ``client/`` and ``server/`` adapt it to Flower's
Message API and ``simulations/`` drives those apps.
"""

__version__ = "0.1.0"
