//! GPU self-test (being written).
