"""Supervisor-facing views (views.sql, created by storage) and, later, the web dashboard."""
