"""Database: engine and sessions, typed ORM tables, and the repositories that own all SQL."""
