//! Placeholder-free library root: this package only holds end-to-end tests under `tests/`.
