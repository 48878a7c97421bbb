"""Cross-cutting pieces of the panel: a clear 503 while the database is away, the login
throttle, security headers, and the retry policy of the panel's tasks."""
