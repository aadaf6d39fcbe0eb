"""medimg gateway: intake, validation, storage and dispatch of inference jobs."""

__version__ = "0.1.0"
