"""Request and response contracts shared by a service and its callers."""
