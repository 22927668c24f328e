//! What is captured, one module per event family, independent of the hook that called it.
pub mod exec;
pub mod open;
pub mod process;
pub mod route;
pub mod tty;
