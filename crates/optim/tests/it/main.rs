//! Integration tests of qtune-optim (one test binary, see STYLE.md §6).

mod common;
mod grads;
mod grouped;
mod maps;
mod reference;
mod resume;
mod schedule;
mod traces;
