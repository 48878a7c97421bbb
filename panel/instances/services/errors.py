"""Domain errors raised by the instance services; the web and API edges turn them into 4xx."""

from panel.instances.states import InstanceStateError

__all__ = [
    "CapacityError",
    "InstanceStateError",
    "InvalidOrder",
    "OperationInProgress",
    "QuotaExceeded",
]


class InvalidOrder(Exception):
    """The order itself is wrong (unknown plan, image of another kind, bad hostname)."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class QuotaExceeded(Exception):
    """The customer's quota does not allow this order."""


class CapacityError(Exception):
    """No host can take the instance. ``reasons`` says why each host was passed over."""

    def __init__(self, message: str, reasons: dict[str, str] | None = None):
        super().__init__(message)
        self.reasons = reasons or {}


class OperationInProgress(Exception):
    """Another operation on the instance has not finished yet."""
