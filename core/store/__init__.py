"""Run folders, atomic writes, locks."""
