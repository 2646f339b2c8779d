"""Haven's shared package: what every service imports (settings, database, storage, auth,
telemetry, contracts). No service imports another service's package."""

__version__ = "0.1.0"
