"""Simulation harness: drives the ServerApp and ClientApp on one machine."""

from simulations.simulate import SimulationResult, simulate

__all__ = ["SimulationResult", "simulate"]
