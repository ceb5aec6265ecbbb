"""Pure Polars transforms: frames in, frames out; no I/O, no storage, no Prefect."""
