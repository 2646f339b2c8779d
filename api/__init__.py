"""The API service: auth and tenants, REST, SSE chat, presigned URLs, job orchestration."""
