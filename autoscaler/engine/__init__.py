"""The cycle: reconcile what TensorDock lists with the store, freeze a snapshot, run the core's
decision, and carry out what the guards leave through the journaling actuator."""
