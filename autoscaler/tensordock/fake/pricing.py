"""How the fake TensorDock bills: its own reading of the field notes, never the client's.

The client has a pricing rule of its own (`autoscaler.tensordock.models.Pricing`); if the fake
borrowed it, a misread rule would price both sides the same and no contract test could catch it.
So the rate is written out here from the field notes' discovery section: `price_per_hr` is per
GPU and excludes vCPU, RAM and storage, which the host prices per unit.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class HostPricing(BaseModel):
    """A host's per-resource hourly prices, as its catalog entry gives them and discovery shows them."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    per_vcpu_hr: float = Field(default=0.0, ge=0)
    per_gb_ram_hr: float = Field(default=0.0, ge=0)
    per_gb_storage_hr: float = Field(default=0.0, ge=0)

    def hourly_price(self, gpu_price_per_hr: float, gpus: int, vcpus: int, ram_gb: float, storage_gb: float) -> float:
        """An instance's `rateHourly`: `gpu_price * gpus + vcpus * per_vcpu_hr + ram_gb * per_gb_ram_hr
        + storage_gb * per_gb_storage_hr` (field notes, "Discovery endpoints")."""
        gpu_part = gpu_price_per_hr * gpus
        vcpu_part = vcpus * self.per_vcpu_hr
        ram_part = ram_gb * self.per_gb_ram_hr
        return gpu_part + vcpu_part + ram_part + self.storage_price(storage_gb)

    def storage_price(self, storage_gb: float) -> float:
        """What a stopped instance is billed: its disk (the field notes' reading of `per_gb_storage_hr`)."""
        return storage_gb * self.per_gb_storage_hr
