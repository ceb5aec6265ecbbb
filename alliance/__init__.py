"""Alliance Watch: see which therapist–client dyads are losing their therapeutic alliance."""

__version__ = "0.2.0"
