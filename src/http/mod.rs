//! The HTTP/1.1 layer of the RPC front (Transmission's JSON RPC), sans-IO:
//! everything between a client's bytes and a parsed request, and between
//! a response and its bytes, plus the RPC server's guards and the web
//! interface's static files. What Transmission's `rpc-server.cc` does;
//! the RPC methods (`rpcimpl.cc`) are another layer's.
//!
//! - [`conn`]: one connection: [`HttpConn`], its [`Limits`] and timers;
//! - [`request`]: [`Request`] and its head parser (`httparse`);
//! - [`chunked`]: the chunked request body decoder;
//! - [`response`]: [`Response`], [`HttpDate`] and the writer;
//! - [`guard`]: session id (409), Basic authentication (401), Host
//!   (421) and client address whitelists, routing ([`Verdict`]);
//! - [`auth`]: [`PasswordHash`] and the credential check's cache and
//!   rate limit;
//! - [`files`]: the web interface's files under `/transmission/web/`.

pub mod auth;
pub mod chunked;
pub mod conn;
pub mod error;
pub mod files;
pub mod guard;
pub mod request;
pub mod response;

#[cfg(test)]
mod tests;

pub use auth::PasswordHash;
pub use conn::{HttpConn, Limits};
pub use error::HttpError;
pub use files::WebFiles;
pub use guard::{Guard, GuardConfig, Verdict};
pub use request::{Headers, Method, Request, Version};
pub use response::{HttpDate, Response};
