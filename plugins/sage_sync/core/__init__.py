"""Shared bottom: every exception, settings, quarter and company-status values, encryption."""
