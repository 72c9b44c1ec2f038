"""Small cross-cutting helpers (logging set-up, decorators)."""
