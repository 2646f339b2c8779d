"""Authentication: who is calling (Principal), tokens, passwords and API keys."""
