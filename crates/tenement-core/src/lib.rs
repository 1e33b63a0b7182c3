//! Pure building blocks of tenement.
//!
//! Identifiers ([`ServiceName`], [`InstanceId`], [`InstanceKey`]), the configuration model and its
//! validation ([`config`]), the instance lifecycle state machine ([`lifecycle`]) and restart
//! backoff ([`backoff`]).
//!
//! # Design
//! Nothing here touches tokio, the filesystem (beyond reading a config file), processes or
//! sockets. Time is always an argument (`now`), randomness too (`jitter`), so every decision is
//! table-tested without starting a process.

pub mod backoff;
pub mod config;
pub mod fnv;
mod id;
pub mod lifecycle;
pub mod route;

pub use id::{IdError, InstanceId, InstanceKey, ServiceName};
