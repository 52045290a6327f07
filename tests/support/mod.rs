//! Test helpers: a raw HTTP/1.1 connection, a keep-alive load client, and
//! running the built binary. Each test file uses what it needs.
#![allow(dead_code)]

pub mod load;
pub mod process;
pub mod raw;
pub mod systemd;
