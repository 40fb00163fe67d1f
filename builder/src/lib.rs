//! # envd-builder
//!
//! The host side of envd-rs and its `envd` command: it evaluates `build.envd`, compiles it to
//! BuildKit LLB, builds the image, runs the environment and connects the user to it.
//!
//! - [`lang`]: the Starlark front end (envd's v1 API) that evaluates a build file into a
//!   [`graph::Graph`];
//! - [`compile`] and [`buildkit`]: the graph as LLB, solved on BuildKit (Docker's embedded one or
//!   a standalone `buildkitd`); [`build`] is `envd build`, with its no-rebuild check;
//! - [`build_context`]: the files of the project a program reads; [`builders`]: `envd context`,
//!   the named builders;
//! - [`env`]: running environments (`envd up`, `ls`, `describe`, `logs`, `exec`, `down`) through
//!   the [`env::runner::Runner`] seam (Docker today), their health through envd-init's API, and
//!   `ssh NAME.envd`;
//! - [`contract`]: what images and runners agree on (user, paths, ports, variables, labels);
//! - [`docker`]: the one Docker client; [`host`]: the host user's envd files and key pair;
//!   [`runtime`]: finding the static in-container binaries.
//!
//! `docs/ARCHITECTURE.md` draws the layout and the way data flows through it.

#![warn(missing_docs)]

pub mod build;
pub mod build_context;
pub mod builders;
pub mod buildkit;
pub mod client_files;
pub mod compile;
pub mod contract;
pub mod docker;
pub mod env;
pub mod graph;
pub mod host;
pub mod init;
pub mod lang;
pub mod lsp;
pub mod output;
pub mod print;
pub mod prune;
pub mod random;
pub mod registry_auth;
pub mod runtime;
