"""tensordock-autoscaler: keep a TensorDock GPU fleet matched to a job queue at the lowest cost."""

__version__ = "0.1.0"
