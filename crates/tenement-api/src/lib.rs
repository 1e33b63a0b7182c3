//! tenement's management API (`/api/...`) as types: what each endpoint takes and answers, the
//! error body (`{"error": ..., "code": ...}`), and [`Client`], which speaks it over the control
//! socket or to a remote server with a token. The server (tenement-edge) serialises these same
//! types, so a field renamed on one side is renamed on both.

mod client;
mod types;

pub use client::{Client, Error, Target};
pub use types::*;
