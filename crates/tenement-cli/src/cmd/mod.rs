//! One module per `ten` subcommand.

pub mod caddyfile;
pub mod config;
pub mod domain;
pub mod fleet;
pub mod https;
pub mod init;
pub mod install;
pub mod instance;
pub mod logs;
pub mod ps;
pub mod serve;
pub mod tokens;
pub mod traffic;
pub mod upgrade;
