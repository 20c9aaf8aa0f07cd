"""The study's plan, its reproduction, the published figures, claims, reports."""
