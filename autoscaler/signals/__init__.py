"""Demand sources: how many jobs wait and run, read from where the team keeps its queue."""

from .base import Demand, DemandSignal, SignalError
from .static import StaticSignal

__all__ = ["Demand", "DemandSignal", "SignalError", "StaticSignal"]
