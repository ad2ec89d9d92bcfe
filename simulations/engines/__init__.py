"""The engines that run a federation on one machine (:func:`simulations.simulate` picks one).

- ``inprocess``: the ServerApp calls the ClientApps in this process
  (:mod:`simulations.engines.inprocess`), optionally through worker processes
  (:mod:`simulations.engines.worker_pool`);
- ``ray``: Flower's Simulation Engine behind a private SuperLink
  (:mod:`simulations.engines.ray`);
- ``batched``: in-process, each round's clients trained at once with ``torch.func``
  (:mod:`simulations.engines.batched`); ``auto`` picks it where it is faster.

Every engine returns a :class:`~simulations.engines.result.SimulationResult`; the calls
into the ClientApp that engines share are in :mod:`simulations.engines.clientapp`.
Importing this package imports no engine (``fedmodel --help`` stays fast).
"""

ENGINES = ("inprocess", "ray", "batched", "auto")
